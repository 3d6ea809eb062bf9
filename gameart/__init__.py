"""Serve trained game-image classifiers with TorchServe.

Packages by role, each importing only those below it:
  gameart.pipeline  the steps before serving: dataset, training, archive (.mar)
  gameart.ops       the operator toolkit: one TorchServe client, the server's lifecycle,
                    scaling, the nginx front
  gameart.measure   load generation, benchmarks, experiments, plots
  gameart.cli       the command lines (argv stops there); scripts/ holds the entry points
The model's metadata and image pipeline live in modelspec/, the served code in handler/, the
checkpoint export in export/ (top-level: TorchServe archives handler/ and modelspec/ as-is).
"""

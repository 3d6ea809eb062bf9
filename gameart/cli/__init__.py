"""The command lines: argv is parsed here into the packages' typed specs, and nowhere else.

Each module has `build_parser()` and `main(argv)`; scripts/<command>.py calls `main`.
"""

"""TorchServe entry point: the file given to torch-model-archiver --handler.

TorchServe calls handle(None, context) once when a worker loads, then handle(batch, context).
All logic lives in handler.service, imported from the copy of this package inside the .mar.
"""

from handler.service import ImageClassifierService

_service = ImageClassifierService()


def handle(data, context):
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)

"""`python tests/gcs_emulator.py PORT BUCKET`: gcp-storage-emulator (from PyPI) on 127.0.0.1:PORT,
with the behaviours of real GCS that it lacks and that orbax (tensorstore) and our workdir lease
rely on: downloads carry the object's generation (x-goog-generation) and honour
ifGenerationNotMatch (304) and ifGenerationMatch (412), and so do uploads (ifGenerationMatch=0:
only if absent).
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(storage, bucket, name):
    try:
        return str(storage.get_file_obj(bucket, name)['generation'])
    except NotFound:
        return '0'


def _with_generation(handler):
    def read(request, response, storage, *args, **kwargs):
        generation = _generation(storage, request.params['bucket_name'],
                                 request.params['object_id'])
        if generation != '0':
            if request.query.get('ifGenerationNotMatch', [None])[0] == generation:
                response.status = HTTPStatus.NOT_MODIFIED
                response['x-goog-generation'] = generation
                return None
            if request.query.get('ifGenerationMatch', [generation])[0] != generation:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
            response['x-goog-generation'] = generation
            response['x-goog-metageneration'] = '1'
        return handler(request, response, storage, *args, **kwargs)
    return read


def get(request, response, storage, *args, **kwargs):
    """The JSON API's object GET: with alt=media a download (tensorstore reads this way)."""
    if request.query.get('alt', [''])[0] == 'media':
        return _with_generation(objects.get)(request, response, storage, *args, **kwargs)
    return objects.get(request, response, storage, *args, **kwargs)


def insert(request, response, storage, *args, **kwargs):
    wanted = request.query.get('ifGenerationMatch', [None])[0]
    if wanted is not None:
        upload_type = request.query.get('uploadType', [''])[0]
        name = (request.query.get('name', [None])[0] if upload_type == 'media'
                else (request.data or {}).get('meta', {}).get('name'))
        if name and _generation(storage, request.params['bucket_name'], name) != wanted:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
    return objects.insert(request, response, storage, *args, **kwargs)


def _patched(handlers):
    replace = {objects.download: _with_generation(objects.download), objects.get: get,
               objects.insert: insert}
    return tuple((regex, {method: replace.get(fn, fn) for method, fn in methods.items()})
                 for regex, methods in handlers)


def main(port, bucket):
    server.HANDLERS = _patched(server.HANDLERS)
    server.create_server('127.0.0.1', int(port), in_memory=True,
                         default_bucket=bucket).run()


if __name__ == '__main__':
    main(*sys.argv[1:])

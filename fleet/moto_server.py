"""Runs on the `s3` host: Debian's moto server with two of its faults fixed, nothing else changed.

- ListObjectVersions: moto 5.1 deep-copies every version in the bucket on each call, whatever the prefix, to mark
  the copies `is_latest`. Each copy reads the whole object and writes it to a new temporary file, and moto's
  BaseModel keeps every instance it makes, so the copies were never freed. The tier lists versions on every backup,
  restore, retention run and `mcp-base-backup list`: with a few GiB of backups, each list wrote that much again to
  the disk every fleet host shares, for as long as moto ran. The listing only reads the key's fields and sets
  `is_latest` on its copy, so a copy of the fields does the same job.
- Signatures: checked over the path and query as the client sent them, not as Flask decoded them, which failed
  any request with a '/' in a parameter: a listing's prefix, and the key marker of every listing's second page.
- Ranged GETs: moto read the whole object for each, then sliced it. boto3 and the AWS CLI download a large object in
  8 MiB ranges, so a download took time that grew with the square of its size (a 2 GiB backup: minutes). A simple
  byte range is now read from the object's stored bytes alone.
"""

import re
import sys
import threading
from urllib.parse import urlsplit, urlunsplit

from flask import request
from moto.core.responses import ActionAuthenticatorMixin
from moto.s3.models import FakeKey
from moto.s3.responses import S3Response
from moto.server import main

stock_dispose = FakeKey.dispose


def fields_only(key, memo):
    """The key's fields, sharing its stored bytes. Made without moto's BaseModel.__new__, which records every instance
    in a class list for good: through it each listing's copies, and their temporary files, lived as long as moto."""
    listed = object.__new__(FakeKey)
    listed.__dict__.update(key.__dict__, listed_copy=True)
    return listed


def dispose(key, garbage=False):
    if not key.__dict__.get("listed_copy"):  # a listed copy's bytes are the stored key's: never closed through it
        stock_dispose(key, garbage)


stock_authenticate = ActionAuthenticatorMixin._authenticate_and_authorize_action


def authenticate_over_the_uri_sent(self, iam_request_cls, resource="*"):
    """A signature covers the path and query as the client encoded them; moto checked it over Flask's decoded URL,
    so a request with a '/' in a parameter (a listing's Prefix='a/', as barman-cloud sends, or the KeyMarker of its
    second page) or a key with a space failed as SignatureDoesNotMatch (moto #5948)."""
    decoded = self.uri
    path, _, query = request.environ["RAW_URI"].partition("?")  # as werkzeug's server received it
    self.uri = urlunsplit(urlsplit(decoded)._replace(path=path, query=query))
    try:
        return stock_authenticate(self, iam_request_cls, resource)
    finally:
        self.uri = decoded


SIMPLE_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")  # first-last or first-: what moto's range handling slices
serving = threading.local()


class StoredRange:
    """A key's stored bytes as moto's range handling uses them: their length, and the one slice it takes, read from
    the key's buffer alone."""

    def __init__(self, key):
        self.key = key

    def __len__(self):
        return self.key.size

    def __getitem__(self, part):
        with self.key.lock:
            self.key._value_buffer.seek(part.start)
            return self.key._value_buffer.read(max(0, min(part.stop, self.key.size) - part.start))


stock_value = FakeKey.value


def value(key):
    return StoredRange(key) if getattr(serving, "simple_range", False) else stock_value.fget(key)


stock_get_object = S3Response.get_object


def get_object(self):
    """moto's GET, its key's bytes read lazily when the request asks for one simple range that moto will slice."""
    wanted = SIMPLE_RANGE.match(request.headers.get("range", ""))
    serving.simple_range = bool(wanted and "partNumber" not in request.args
                                and (not wanted[2] or int(wanted[2]) >= int(wanted[1])))
    try:
        return stock_get_object(self)
    finally:
        serving.simple_range = False


FakeKey.__deepcopy__ = fields_only
FakeKey.dispose = dispose
ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate_over_the_uri_sent
FakeKey.value = property(value, stock_value.fset)
S3Response.get_object = get_object

if __name__ == "__main__":
    sys.exit(main())

"""Runs on the `s3` host: Debian's moto server with two of its faults fixed, nothing else changed.

- ListObjectVersions: moto 5.1 deep-copies every version in the bucket on each call, whatever the prefix, to mark
  the copies `is_latest`. Each copy reads the whole object and writes it to a new temporary file, and moto's
  BaseModel keeps every instance it makes, so the copies were never freed. The tier lists versions on every backup,
  restore, retention run and `mcp-base-backup list`: with a few GiB of backups, each list wrote that much again to
  the disk every fleet host shares, for as long as moto ran. The listing only reads the key's fields and sets
  `is_latest` on its copy, so a copy of the fields does the same job.
- Signatures: checked over the path and query as the client sent them, not as Flask decoded them, which failed
  any request with a '/' in a parameter: a listing's prefix, and the key marker of every listing's second page.
"""

import sys
from urllib.parse import urlsplit, urlunsplit

from flask import request
from moto.core.responses import ActionAuthenticatorMixin
from moto.s3.models import FakeKey
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


FakeKey.__deepcopy__ = fields_only
FakeKey.dispose = dispose
ActionAuthenticatorMixin._authenticate_and_authorize_action = authenticate_over_the_uri_sent

if __name__ == "__main__":
    sys.exit(main())

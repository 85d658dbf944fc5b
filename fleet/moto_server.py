"""Runs on the `s3` host: Debian's moto server, except that ListObjectVersions no longer copies every object's bytes.

moto 5.1 deep-copies every version in the bucket on each ListObjectVersions, whatever the prefix, to mark the
copies `is_latest`. Each copy reads the whole object and writes it to a new temporary file, and moto's BaseModel
keeps every instance it makes, so the copies were never freed. The tier lists versions on every backup run and
every metrics scrape: with a few GiB of backups, each list wrote that much again to the disk every fleet host
shares, for as long as moto ran. The listing only reads the key's fields and sets `is_latest` on its copy, so a
copy of the fields does the same job.
"""

import sys

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


FakeKey.__deepcopy__ = fields_only
FakeKey.dispose = dispose

if __name__ == "__main__":
    sys.exit(main())

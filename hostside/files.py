"""Files the host-side programs replace whole, safely in a directory another user may write."""

import contextlib
import os
import tempfile


def replace(path, text, mode):
    """Write `text` to a new file beside `path` and rename it over `path`: a reader sees the old file or the new one,
    never a part. The new file has a random name and is created exclusively (mkstemp: O_EXCL), so never through a
    link planted in advance, and a rename replaces a link at `path`, never follows it. `mode` whatever the umask."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise

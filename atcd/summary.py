"""`summary.csv`, timm's per-epoch table: one row per epoch, trimmed on resume."""
import csv
import io
import os

from .checkpoint import atomic_write_text

__all__ = ["trim_summary", "write_summary"]


def write_summary(path: str, row: dict):
    """Append one epoch's row to `summary.csv` (header first when the file is new). A row with other columns than
    the file's (a run resumed by another version, e.g. one that adds `collapsed`) rewrites the table with the union
    of the columns, so no value lands under another column's name."""
    new = not os.path.exists(path)
    if not new:
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
            header = list(old[0]) if old else []
        if header and list(row) != header:
            fields = header + [k for k in row if k not in header]
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows([*old, row])
            atomic_write_text(path, buf.getvalue())
            return
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def trim_summary(path: str, start_epoch: int):
    """On resume: drop the rows of epochs the resumed run trains again (a kill between the row and the checkpoint
    would otherwise leave the epoch twice)."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    keep = rows[:1] + [r for r in rows[1:] if r and int(r[0]) < start_epoch]
    if len(keep) < len(rows):
        buf = io.StringIO()
        csv.writer(buf).writerows(keep)
        atomic_write_text(path, buf.getvalue())

"""Read back what an offline W&B run wrote: the history rows of its `run-<id>.wandb` file.

wandb 0.2x shipped a Python reader (wandb.sdk.internal.datastore); since wandb-core took over, only the Go
side reads these files. The framing is LevelDB's log format (32 KiB blocks, 7-byte record headers,
records split FIRST/MIDDLE/LAST across blocks) behind a 7-byte ":W&B" file header; each record is
wandb's own protobuf `Record`, decoded here with wandb's generated class.
"""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7  # crc32c (4), length (2), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zeros to the end of the block
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history(path: Path) -> list[dict]:
    """Every wandb.log call as {key: value, "_step": n}, in the order logged."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_config(path: Path) -> dict:
    """The config the run was started with ({key: value} at the top level)."""
    for record in records(path):
        if record.WhichOneof("record_type") == "run":
            return {item.key: json.loads(item.value_json) for item in record.run.config.update}
    return {}

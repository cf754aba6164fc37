"""Checkpoints that nothing can break: atomic numbered generations, a SHA-256 manifest as the
commit record, retention after verification, fallback to the previous good generation, and an
optional mirror (e.g. Google Drive) filled in the background.

A checkpoint folder (`RUN/checkpoints`, and the mirror folder, which has the same layout) holds:

    ckpt-000012.pt   numbered generations of the full training state (newest `keep` kept)
    best-000011.pt   the state of the best validation epoch (only the newest kept)
    last.pt, best.pt relative links to the newest of each (copies where links are unsupported)
    manifest.json    every committed file with its SHA-256, size, epoch, step and creation time

A generation exists once the manifest lists it: the file is written under a temporary name in the
same folder, fsynced, renamed over, re-read and hashed, and only then recorded; the manifest itself
is replaced atomically the same way. So a kill at any instant leaves either the old or the new
manifest, each naming only complete, verified files. Loading always checks the SHA-256 first,
because `torch.load` does not check the zip CRC and a flipped byte can otherwise load silently,
and always uses `weights_only=True`, so a checkpoint can never run code.

The package, one file per job: `files` (hashed atomic writing), `safeload` (weights-only loading
and its allow-list, one file from anywhere), `manifest` (a folder's commit record and retention),
`manager` (CheckpointManager), `mirror` (the background copy), `rng` (generator states, and
`rng_untouched` for a block that must not move them).
"""

from ichseg.training.checkpoint.files import sha256_file
from ichseg.training.checkpoint.manager import CheckpointManager, LoadedCheckpoint
from ichseg.training.checkpoint.manifest import (
    BEST,
    FORMAT_VERSION,
    LAST,
    LEGACY_KEYS,
    MANIFEST,
    MISMATCH,
    MISSING,
    OK,
    UNREADABLE,
    UNVERIFIED,
)
from ichseg.training.checkpoint.rng import capture_rng_state, restore_rng_state, rng_untouched
from ichseg.training.checkpoint.safeload import is_legacy, load_checkpoint_file, model_state_from

__all__ = [
    "BEST", "FORMAT_VERSION", "LAST", "LEGACY_KEYS", "MANIFEST", "MISMATCH", "MISSING", "OK",
    "UNREADABLE", "UNVERIFIED", "CheckpointManager", "LoadedCheckpoint", "capture_rng_state",
    "is_legacy", "load_checkpoint_file", "model_state_from", "restore_rng_state", "rng_untouched",
    "sha256_file",
]

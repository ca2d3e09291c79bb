"""What a session's start may create on disk, as it was before the start, so that a start that
fails leaves nothing behind but the session file saying why: the session log, the registry
entry `--resume` reads, the checkpoint database, the work folder (scratch frames, thumbnails,
disk reserve), the caches' folders and any folder made for them. Only what did not exist
before the start is removed, so a failed resume, or a start refused because another session
holds the file, touches nothing of the session already there. A demonstration bank that was
built completely stays in the state folder: it is the model's cache, not the session's."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.config import RunConfig, checkpoint_path, registry_path, work_dir

STATE_FOLDERS = ("logs", "sessions", "banks", "vlm-cache")


def _new_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet."""
    made = []
    for path in (folder, *folder.parents):
        if path.exists():
            break
        made.append(path)
    return made


class StartFootprint:
    """Taken before a start; `clear` removes what the start created."""

    def __init__(self, config: RunConfig) -> None:
        out, state = Path(config.out), Path(config.state_dir)
        ckpt = checkpoint_path(out)
        self.out, self.out_is_new = out, not out.exists()
        candidates = [state / "logs" / f"{config.session_id}.log",
                      registry_path(state, config.session_id),
                      ckpt, Path(f"{ckpt}-wal"), Path(f"{ckpt}-shm"), Path(f"{ckpt}-journal")]
        self.files = [path for path in candidates if not path.exists()]
        self.work = work_dir(out) if not work_dir(out).exists() else None
        folders = {f for name in STATE_FOLDERS for f in _new_folders(state / name)}
        folders.update(_new_folders(out.parent))
        self.folders = sorted(folders, key=lambda p: len(p.parts), reverse=True)

    def clear(self, keep_out: bool) -> None:
        """Remove what the start created; the session file too unless `keep_out` (it holds the
        failed start's reason). Folders go only where empty."""
        for path in self.files + ([self.out] if self.out_is_new and not keep_out else []):
            path.unlink(missing_ok=True)
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
        for folder in self.folders:
            try:
                folder.rmdir()
            except OSError:       # not empty (a cache built, the file kept) or already gone
                pass

"""Multipart uploads streamed straight into TOKENFLOW_FILES_DIR, with the upload limit."""

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler

from tokenflow_site.errors import ApiError


def files_dir() -> Path:
    path = Path(settings.TOKENFLOW_FILES_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def too_large(size: int) -> ApiError:
    limit = settings.TOKENFLOW_MAX_UPLOAD_BYTES
    return ApiError(
        f"The file is larger than the upload limit of {limit} bytes "
        f"(TOKENFLOW_MAX_UPLOAD_BYTES); {size}+ bytes were sent.",
        code="file_too_large",
        status=413,
        field="file",
    )


@dataclass
class StoredUpload:
    """An uploaded file already on disk (`path`, a `.part` name until it is kept)."""

    name: str
    path: Path
    size: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class DiskUploadHandler(FileUploadHandler):
    """Writes the `file` field to disk chunk by chunk as the parser reads it, hashing as it
    goes; past TOKENFLOW_MAX_UPLOAD_BYTES it deletes what it wrote and raises a 413."""

    def new_file(self, field_name, file_name, *args, **kwargs) -> None:
        super().new_file(field_name, file_name, *args, **kwargs)
        self.limit = settings.TOKENFLOW_MAX_UPLOAD_BYTES
        self.path = files_dir() / f"{uuid.uuid4().hex}.part"
        self.handle = self.path.open("wb")
        self.size = 0
        self.digest = hashlib.sha256()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.size += len(raw_data)
        if self.size > self.limit:
            self.handle.close()
            self.path.unlink(missing_ok=True)
            raise too_large(self.size)
        self.handle.write(raw_data)
        self.digest.update(raw_data)
        return None

    def file_complete(self, file_size: int) -> StoredUpload:
        self.handle.close()
        return StoredUpload(
            name=self.file_name or "upload.jsonl",
            path=self.path,
            size=self.size,
            sha256=self.digest.hexdigest(),
        )

    def upload_interrupted(self) -> None:
        if getattr(self, "handle", None) is not None:
            self.handle.close()
            self.path.unlink(missing_ok=True)


def stored_from(upload) -> StoredUpload:
    """A StoredUpload from a file Django's own handlers already parsed (a staff session's
    CSRF check reads the form before the view can install DiskUploadHandler)."""
    if isinstance(upload, StoredUpload):
        return upload
    if upload.size > settings.TOKENFLOW_MAX_UPLOAD_BYTES:
        raise too_large(upload.size)
    path = files_dir() / f"{uuid.uuid4().hex}.part"
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for chunk in upload.chunks():
            handle.write(chunk)
            digest.update(chunk)
    return StoredUpload(upload.name or "upload.jsonl", path, upload.size, digest.hexdigest())

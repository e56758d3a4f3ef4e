"""``/v1/datasets``: upload a dataset as an archive, read, list and delete uploads (service/uploads/store.py).

The body is the archive itself (zip, or tar: plain, .gz, .bz2, .xz), streamed to disk as it arrives, never a
form: python-multipart would buffer it, and a raw body is what ``curl --data-binary @pets.zip`` and ``fetch(url,
{body: file})`` send. ``GET /v1/datasets/builtin`` is the catalogue's (service/routers/catalog.py), registered first.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi import Path as PathParam
from starlette.requests import ClientDisconnect

from service.deps import UploadsDep, api_key_scheme
from service.errors import NotAnArchive, TruncatedArchive
from service.schemas import ErrorBody, UploadedDataset

from . import _jobs

__all__ = ["UPLOAD_PATH", "router"]

UPLOAD_PATH = "/v1/datasets"

router = APIRouter(prefix=UPLOAD_PATH, tags=["datasets"], dependencies=[Depends(api_key_scheme)])

_MEDIA_TYPES = (
    "application/zip",
    "application/x-tar",
    "application/gzip",
    "application/x-bzip2",
    "application/x-xz",
    "application/octet-stream",
)
_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The archive: one folder of images per class (optionally under train/, val/, test/), or a "
        ".csv/.jsonl manifest (path,label) with the images. Recognised by content; the Content-Type is not trusted.",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in _MEDIA_TYPES},
    }
}
_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": UploadedDataset, "description": "The same archive was uploaded before: that dataset."},
    401: {"model": ErrorBody},
    413: {"model": ErrorBody, "description": "`upload_too_large`, `too_many_files` or `archive_bomb`"},
    415: {"model": ErrorBody, "description": "`not_an_archive`: not a zip or tar, or one that cannot be read"},
    507: {
        "model": ErrorBody,
        "description": "`upload_disk_full`: storing or extracting it would leave the server's disk under its floor",
    },
    422: {
        "model": ErrorBody,
        "description": "`unsafe_archive_entry` (its `entry` named), `truncated_archive`, `no_images`, "
        "`too_few_classes`, `invalid_dataset` (e.g. two manifests) or `invalid_request`",
    },
}
UploadId = Annotated[str, PathParam(pattern="^[0-9a-f]{64}$", description="The upload's id (its sha256).")]


@router.post("", status_code=201, response_model=UploadedDataset, responses=_UPLOAD_RESPONSES, openapi_extra=_BODY)
async def upload_dataset(
    request: Request,
    response: Response,
    uploads: UploadsDep,
    name: Annotated[
        str | None,
        Query(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$", description="A name for people."),
    ] = None,
) -> dict[str, Any]:
    """Upload a labelled image dataset as an archive; 201 with its summary (classes, images per class, files left
    out and why), or 200 when the same archive was uploaded before. Use the returned ``dataset`` in rankings and
    fine-tunes. Budgets (settings): ``max_upload_bytes``, ``max_upload_files``, ``max_upload_extracted_bytes``,
    ``max_upload_ratio``; uploads are removed ``upload_retention_days`` after their last upload."""
    if request.headers.get("content-type", "").lower().startswith("multipart/"):
        raise NotAnArchive(
            "send the archive itself as the request body (e.g. curl --data-binary @pets.zip), not as a form upload"
        )
    try:
        summary, created = await uploads.upload(request.stream(), declared_bytes=_content_length(request), name=name)
    except ClientDisconnect:
        raise TruncatedArchive("the upload was interrupted before the archive's end; upload it again") from None
    response.status_code = 201 if created else 200
    response.headers["Location"] = summary["url"]
    return summary


def _content_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


@router.get("", response_model=list[UploadedDataset], responses=_jobs.error_responses(401))
def list_datasets(uploads: UploadsDep) -> list[dict[str, Any]]:
    """The uploaded datasets, newest first (uploads past their retention period are removed first)."""
    return uploads.list_uploads()


@router.get("/{dataset_id}", response_model=UploadedDataset, responses=_jobs.error_responses(401, 404, 422))
def get_dataset(dataset_id: UploadId, uploads: UploadsDep) -> dict[str, Any]:
    """An uploaded dataset's summary; 404 ``dataset_not_found`` when deleted or expired."""
    return uploads.view(dataset_id)


@router.delete("/{dataset_id}", response_model=UploadedDataset, responses=_jobs.error_responses(401, 404, 422))
def delete_dataset(dataset_id: UploadId, uploads: UploadsDep) -> dict[str, Any]:
    """Remove an uploaded dataset; returns what it was. Jobs still queued on it fail with ``dataset_not_found``."""
    return uploads.delete(dataset_id)

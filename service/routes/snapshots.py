"""Snapshots of a collection: take, list, download, delete, and restore one (service/snapshots.py)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

from service.catalog import MAX_SHARDS
from service.problems import ProblemRoute
from service.routes.collections import collection_out
from service.routes.points import BodySource
from service.schemas import CollectionOut, DeletedOut, SnapshotOut, SnapshotsOut
from service.snapshots import SnapshotInfo, Snapshots

router = APIRouter(prefix="/v1/collections/{name}/snapshots", tags=["snapshots"], route_class=ProblemRoute)

TAR = "application/x-tar"
UPLOAD_TYPES = (TAR, "application/octet-stream")
_TAR_BODY = {"required": True, "content": {t: {"schema": {"type": "string", "format": "binary",
                                                          "description": "a snapshot archive (tar)"}}
                                           for t in UPLOAD_TYPES}}


def snapshots_of(request: Request) -> Snapshots:
    snapshots: Snapshots = request.app.state.snapshots
    return snapshots


def snapshot_out(info: SnapshotInfo) -> SnapshotOut:
    return SnapshotOut(name=info.name, collection=info.collection, bytes=info.bytes, created=info.created,
                       last_operation_id=info.last_seq, count=info.count, indexes_included=info.indexes_included,
                       rebuild_reason=info.rebuild_reason)


@router.post("", response_model=SnapshotOut, status_code=201,
             summary="Take a snapshot: a consistent archive of the collection, while writes continue")
def create_snapshot(name: str, request: Request) -> SnapshotOut:
    """Writes `<data dir>/snapshots/{name}/<snapshot>.tar`: the points up to one write sequence
    (`last_operation_id`: every write acknowledged before the request, none that starts after it),
    the indexes at the same sequence, and a manifest with checksums. Writes to this collection wait
    only while its indexes are written out."""
    return snapshot_out(snapshots_of(request).create(name))


@router.get("", response_model=SnapshotsOut, summary="List the collection's snapshots")
def list_snapshots(name: str, request: Request) -> SnapshotsOut:
    """Oldest first; snapshots stay after their collection is deleted."""
    return SnapshotsOut(snapshots=[snapshot_out(i) for i in snapshots_of(request).list(name)])


@router.put("/upload", response_model=CollectionOut, status_code=201, openapi_extra={"requestBody": _TAR_BODY},
            summary="Restore a snapshot into a new or empty collection (streamed body)",
            responses={415: {"description": "neither application/x-tar nor application/octet-stream"}})
def restore_snapshot(name: str, request: Request,
                     shards: int | None = Query(None, ge=1, le=MAX_SHARDS, description=(
                         "shards of the restored collection (default: the archive's own count); more than 1 "
                         "needs Ray (LOGITSEARCH_RAY_ADDRESS). When it differs from the archive's, each point "
                         "goes to the shard its id routes to and the indexes are rebuilt there"))) -> CollectionOut:
    """The body is a snapshot archive (`Content-Type: application/x-tar`), streamed to disk and
    checked whole (format, version, sizes, sha256 of every member, the rows themselves) before
    anything is written; a damaged, truncated or foreign archive answers 422 naming the reason. The
    collection `name` must not exist, or be empty with the same configuration (409 otherwise; a
    sharded restore needs a new name). A sharded restore is all or nothing: a shard that fails
    before it commits answers 503 naming the shard and leaves no collection behind."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in UPLOAD_TYPES:
        raise HTTPException(415, "send the snapshot archive as application/x-tar (or application/octet-stream)")
    return collection_out(snapshots_of(request).restore(name, BodySource(request), shards))


@router.get("/{snapshot}", response_class=FileResponse, summary="Download a snapshot (tar, streamed)",
            responses={200: {"content": {TAR: {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the archive"}})
def download_snapshot(name: str, snapshot: str, request: Request) -> Response:
    path = snapshots_of(request).path(name, snapshot)
    return FileResponse(path, media_type=TAR, filename=path.name)


@router.delete("/{snapshot}", response_model=DeletedOut, summary="Delete a snapshot")
def delete_snapshot(name: str, snapshot: str, request: Request) -> DeletedOut:
    snapshots_of(request).delete(name, snapshot)
    return DeletedOut(deleted=snapshot)

"""A typed Python client of the backbone-rank HTTP API (httpx).

>>> from service.client import Client
>>> with Client("http://127.0.0.1:8000") as client:                    # doctest: +SKIP
...     result = client.rank("builtin:glyphs-greek", ["random:resnet10t", "tf_efficientnet_lite0.in1k"],
...                          max_per_class=8, on_progress=print)
...     print([(b.rank, b.id) for b in result.backbones])

:meth:`Client.rank` and :meth:`Client.finetune` take the request model (:mod:`service.contract.requests`;
or keyword arguments that build it), submit it, follow the job's server-sent events (reconnecting when the
server ends a stream on its time bound or the stream breaks, polling while the server holds too many streams)
and return the typed result (:mod:`service.contract.results`); a failed or cancelled job raises
:class:`ClientError` with the job's ``code`` and ``detail``. Every HTTP error is a :class:`ClientError`
too, carrying the server's ``{code, detail}``. :meth:`Client.upload_dataset` sends a local folder (zipped into a
temporary file first) or archive to the server, for a dataset the server cannot see:

>>> with Client("http://127.0.0.1:8000") as client:                    # doctest: +SKIP
...     uploaded = client.upload_dataset("pets/")
...     result = client.rank(uploaded["ref"], ["@mobile"])
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from service.atomic import atomic_path
from service.contract import FinetuneRequest, FinetuneResult, RankingRequest, RankingResult

__all__ = ["Client", "ClientError", "dataset_ref", "zip_folder"]

ProgressCallback = Callable[[dict[str, Any]], None]
_TERMINAL = ("succeeded", "failed", "cancelled")
_PREFIX = {"ranking": "/v1/rankings", "finetune": "/v1/finetunes"}


class ClientError(Exception):
    """An error answer of the API, or a job that did not succeed.

    Attributes
    ----------
    code : str
        The server's stable code (``path_outside_roots``, ``queue_full``, ...), a failed job's error code,
        ``cancelled``, or, from the client itself, ``connection_error`` / ``timeout``.
    detail : str
        What went wrong and how to fix it.
    status : int or None
        HTTP status, when the error is an HTTP answer.
    body : dict
        The full error body (context fields such as ``suggestions``), or the job for job failures.
    """

    def __init__(self, code: str, detail: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(f"[{code}] {detail}")
        self.code = code
        self.detail = detail
        self.status = status
        self.body = body


def dataset_ref(dataset: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """A dataset reference as the API takes it: a dict is passed through; text is parsed like the CLI's
    (``builtin:NAME``, ``hf:PATH``, ``.csv``/``.jsonl`` manifests, folders, ``#split`` suffixes). Paths are
    the *server's* paths."""
    if isinstance(dataset, Mapping):
        return dict(dataset)
    from service.pipeline.data.refs import parse_dataset_ref  # the standard library and service.errors only

    return parse_dataset_ref(os.fspath(dataset)).to_dict()


class Client:
    """Client of one backbone-rank server.

    Parameters
    ----------
    base_url : str
        E.g. ``"http://127.0.0.1:8000"``.
    api_key : str, optional
        Sent as ``X-API-Key`` (default: ``$BACKBONE_RANK_API_KEY`` when set).
    timeout : float
        Seconds for ordinary requests (streams wait longer between events).
    transport : httpx.BaseTransport, optional
        For tests (e.g. ``httpx.WSGITransport``); default: the network.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        api_key = api_key if api_key is not None else os.environ.get("BACKBONE_RANK_API_KEY") or None
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ http

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise ClientError("timeout", f"{method} {path} timed out: {err}") from err
        except httpx.TransportError as err:
            raise ClientError("connection_error", f"cannot reach {self._http.base_url}: {err}") from err
        if response.status_code >= 400:
            raise _http_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # --------------------------------------------------------------------------------------- service

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def ready(self) -> dict[str, Any]:
        """``/readyz``; raises ``ClientError`` (``not_ready``) while no worker is alive."""
        return self._json("GET", "/readyz")

    def backbones(self) -> dict[str, Any]:
        return self._json("GET", "/v1/backbones")

    def estimators(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/estimators")["estimators"]

    def builtin_datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/datasets/builtin")["datasets"]

    # --------------------------------------------------------------------------------------------- uploads

    def upload_dataset(
        self, path: str | os.PathLike[str], *, name: str | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        """Upload a local dataset to the server; returns its summary (``ref``: ``upload:<id>``, usable as the
        dataset of a ranking or fine-tune; ``classes``, ``class_counts``, ``skipped_files``).

        ``path`` is a folder (one sub-folder of images per class, or a manifest with the images), zipped into a
        temporary file first, or an archive (.zip, .tar, .tar.gz, ...) sent as it is. The file is streamed, never
        read whole. Uploading the same archive again returns the same dataset. ``timeout``: seconds to wait for the
        server to take and check the archive.
        """
        source = Path(path)
        if not source.exists():
            raise ClientError("dataset_not_found", f"{source} does not exist; give a folder or an archive")
        with contextlib.ExitStack() as stack:
            if source.is_dir():
                archive = stack.enter_context(tempfile.TemporaryDirectory(prefix="backbone-rank-upload-"))
                upload = zip_folder(source, Path(archive) / "dataset.zip")
            else:
                upload = source
            shown = name or source.name
            params = {"name": shown} if shown else {}
            fh = stack.enter_context(open(upload, "rb"))
            headers = {
                "Content-Type": "application/zip" if upload.suffix.lower() == ".zip" else "application/octet-stream"
            }
            limits = httpx.Timeout(self._http.timeout.connect or 30.0, read=timeout, write=timeout, pool=timeout)
            return self._json("POST", "/v1/datasets", content=fh, headers=headers, params=params, timeout=limits)

    def uploaded_datasets(self) -> list[dict[str, Any]]:
        """The server's uploaded datasets, newest first."""
        return self._json("GET", "/v1/datasets")

    def delete_dataset(self, upload_id: str) -> dict[str, Any]:
        """Remove an uploaded dataset (its id, or its ``upload:<id>`` reference)."""
        return self._json("DELETE", f"/v1/datasets/{upload_id.removeprefix('upload:')}")

    # ------------------------------------------------------------------------------------------- jobs

    def submit_ranking(
        self,
        request: RankingRequest | str | os.PathLike[str] | Mapping[str, Any],
        backbones: Sequence[str] | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Queue a ranking; returns ``{id, kind, state, url, events_url}``. ``request`` is a
        :class:`RankingRequest`, or the dataset, with ``backbones`` and the request's other fields as keywords."""
        body = _ranking_request(request, backbones, fields)
        return self._submit("ranking", body.model_dump(mode="json", exclude_defaults=True), idempotency_key)

    def submit_finetune(
        self,
        request: FinetuneRequest | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        backbone: str | None = None,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Queue a fine-tuning: a :class:`FinetuneRequest`, or the dataset and ``backbone`` (or ``ranking_id=``:
        that ranking's winner, on its dataset unless one is given) with the request's other fields as keywords."""
        body = _finetune_request(request, backbone, fields)
        return self._submit("finetune", body.model_dump(mode="json", exclude_defaults=True), idempotency_key)

    def _submit(self, kind: str, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", _PREFIX[kind], json=body, headers=headers)

    def get(self, kind: str, job_id: str) -> dict[str, Any]:
        """The job (``kind``: ``"ranking"`` or ``"finetune"``)."""
        return self._json("GET", f"{_PREFIX[kind]}/{job_id}")

    def list_jobs(self, kind: str, *, limit: int = 50) -> list[dict[str, Any]]:
        """The newest ``limit`` jobs of ``kind``, newest first, as the API lists them (schemas
        ``RankingJobSummary`` / ``FinetuneJobSummary``): state, progress, error and a ``summary`` of a succeeded
        job's result (a ranking's ``winner`` and its ``predicted_accuracy``; a fine-tune's ``backbone`` and
        ``test_accuracy``), never the whole request or result (:meth:`get` has them)."""
        return self._json("GET", _PREFIX[kind], params={"limit": limit})

    def list_rankings(self, *, limit: int = 50) -> list[dict[str, Any]]:
        return self.list_jobs("ranking", limit=limit)

    def list_finetunes(self, *, limit: int = 50) -> list[dict[str, Any]]:
        return self.list_jobs("finetune", limit=limit)

    def get_ranking(self, job_id: str) -> dict[str, Any]:
        return self.get("ranking", job_id)

    def get_finetune(self, job_id: str) -> dict[str, Any]:
        return self.get("finetune", job_id)

    def cancel(self, kind: str, job_id: str) -> dict[str, Any]:
        """Cancel a job; raises ``ClientError`` ``job_finished`` when it already ended."""
        return self._json("DELETE", f"{_PREFIX[kind]}/{job_id}")

    def events(self, kind: str, job_id: str, *, read_timeout: float = 60.0) -> Iterator[tuple[str, Any]]:
        """The job's server-sent events as ``(event, data)`` until ``end`` (or the stream breaks)."""
        timeout = httpx.Timeout(self._http.timeout.connect or 30.0, read=read_timeout)
        try:
            with self._http.stream("GET", f"{_PREFIX[kind]}/{job_id}/events", timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _http_error(response)
                yield from _parse_sse(response.iter_lines())
        except httpx.TimeoutException as err:
            raise ClientError("timeout", f"no event from job {job_id} for {read_timeout} s") from err
        except httpx.TransportError as err:
            raise ClientError("connection_error", f"event stream of job {job_id} broke: {err}") from err

    def wait(
        self,
        kind: str,
        job_id: str,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Follow the job until it ends; returns the final job. ``on_progress(progress)`` gets every progress
        event. A stream the server ended with ``reconnect`` (its time bound) is reopened at once, a broken one after
        reading the job once (so nothing is missed); while the server refuses streams (``too_many_streams``) the job
        is polled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reopen, pause = False, 0.5
            try:
                for event, data in self.events(kind, job_id):
                    if event == "progress" and on_progress is not None:
                        on_progress(data)
                    elif event == "end":
                        return self.get(kind, job_id)
                    elif event == "reconnect":
                        reopen = True
                        break
                    if deadline is not None and time.monotonic() > deadline:
                        break
            except ClientError as err:
                if err.code not in ("connection_error", "timeout", "too_many_streams"):
                    raise
                if err.code == "too_many_streams":
                    pause = 2.0
            if reopen and (deadline is None or time.monotonic() <= deadline):
                continue
            job = self.get(kind, job_id)
            if job["state"] in _TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError("timeout", f"job {job_id} is still {job['state']} after {timeout} s", body=job)
            time.sleep(pause)

    def _result(self, job: dict[str, Any]) -> dict[str, Any]:
        if job["state"] == "succeeded":
            return dict(job["result"])
        if job["state"] == "cancelled":
            raise ClientError("cancelled", f"job {job['id']} was cancelled", body=job)
        error = job.get("error") or {}
        raise ClientError(error.get("code", "job_failed"), error.get("detail", "the job failed"), body=job)

    def rank(
        self,
        request: RankingRequest | str | os.PathLike[str] | Mapping[str, Any],
        backbones: Sequence[str] | None = None,
        *,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> RankingResult:
        """Rank and return the result, best first: ``client.rank(RankingRequest(...))``, or
        ``client.rank(dataset, backbones, max_per_class=8, ...)`` with the request's fields as keywords.

        Raises
        ------
        ClientError
            The request was refused (its code), or the job failed (the job's code) or was cancelled.
        pydantic.ValidationError
            The keyword arguments do not make a valid :class:`RankingRequest` (nothing was sent).
        """
        job = self.submit_ranking(request, backbones, idempotency_key=idempotency_key, **fields)
        done = self.wait("ranking", job["id"], on_progress=on_progress, timeout=timeout)
        return RankingResult.model_validate(self._result(done))

    def finetune(
        self,
        request: FinetuneRequest | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        backbone: str | None = None,
        *,
        idempotency_key: str | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
        **fields: Any,
    ) -> FinetuneResult:
        """Fine-tune and return the result (arguments as :meth:`submit_finetune`); ``result.job_id`` names the job
        for :meth:`download_weights`."""
        job = self.submit_finetune(request, backbone, idempotency_key=idempotency_key, **fields)
        done = self.wait("finetune", job["id"], on_progress=on_progress, timeout=timeout)
        return FinetuneResult.model_validate({**self._result(done), "job_id": job["id"]})

    def download_weights(self, job_id: str, path: str | os.PathLike[str]) -> Path:
        """Write a succeeded fine-tune's ``model.safetensors`` to ``path`` (streamed); returns the path."""
        target = Path(path)
        try:
            with self._http.stream("GET", f"/v1/finetunes/{job_id}/weights") as response:
                if response.status_code >= 400:
                    response.read()
                    raise _http_error(response)
                with atomic_path(target, suffix=".part") as tmp, open(tmp, "wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)
        except httpx.TransportError as err:
            raise ClientError("connection_error", f"download of the weights of {job_id} failed: {err}") from err
        return target


#: Already compressed: stored as they are (deflating them again costs time and saves nothing).
_STORED_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")


def zip_folder(folder: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Zip ``folder``'s content (names relative to it) into ``target``, file by file from disk: hidden files and
    symbolic links are left out (the server would refuse links, and a link may lead outside the folder)."""
    root = Path(folder)
    out = Path(target)
    with zipfile.ZipFile(out, "w", allowZip64=True) as archive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not os.path.islink(Path(dirpath, d)))
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                if filename.startswith(".") or path.is_symlink() or not path.is_file():
                    continue
                method = zipfile.ZIP_STORED if path.suffix.lower() in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
                archive.write(path, path.relative_to(root).as_posix(), compress_type=method)
    return out


def _ranking_request(
    request: RankingRequest | str | os.PathLike[str] | Mapping[str, Any],
    backbones: Sequence[str] | None,
    fields: Mapping[str, Any],
) -> RankingRequest:
    if isinstance(request, RankingRequest):
        if backbones is not None or fields:
            raise TypeError("give either a RankingRequest or the dataset, backbones and fields, not both")
        return request
    if backbones is None:
        raise TypeError("backbones are required with a dataset (or pass a RankingRequest)")
    return RankingRequest(dataset=dataset_ref(request), backbones=list(backbones), **fields)


def _finetune_request(
    request: FinetuneRequest | str | os.PathLike[str] | Mapping[str, Any] | None,
    backbone: str | None,
    fields: Mapping[str, Any],
) -> FinetuneRequest:
    if isinstance(request, FinetuneRequest):
        if backbone is not None or fields:
            raise TypeError("give either a FinetuneRequest or the dataset, backbone and fields, not both")
        return request
    dataset = None if request is None else dataset_ref(request)
    return FinetuneRequest(dataset=dataset, backbone=backbone, **fields)


def _http_error(response: httpx.Response) -> ClientError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or f"http_{response.status_code}")
    detail = str(body.get("detail") or response.text[:500] or response.reason_phrase)
    return ClientError(code, detail, status=response.status_code, body=body)


def _parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """Events of a ``text/event-stream`` (``event:``/``data:`` fields, blank line ends an event)."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                text = "\n".join(data)
                try:
                    payload: Any = json.loads(text)
                except ValueError:
                    payload = text
                yield event, payload
            event, data = "message", []
            continue
        if line.startswith(":"):
            yield "keepalive", None  # a comment: lets a waiting caller check its deadline
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)

"""lwise.publish.s3 against a real local S3 server (moto_server on 127.0.0.1)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import pandas as pd
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from conftest import make_imagefolder
from s3server import moto_s3_server

from lwise.data import dirmap
from lwise.data.dirmap import DirmapError
from lwise.publish import bucket
from lwise.publish.bucket import (
    CREDENTIALS_HINT,
    S3AccessDenied,
    S3CredentialsError,
    S3UploadError,
    ensure_bucket,
    explain,
    make_client,
    retrying,
)
from lwise.publish.naming import bucket_name, key_prefix, object_url
from lwise.publish.s3 import UploadConfig, upload_image_set

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3_server() as endpoint:
        yield endpoint


def make_set(root: Path) -> Path:
    """10 tiny PNGs under root/images and root/dirmap.csv describing them."""
    images = make_imagefolder(
        root / "images", {"train": {"cat": 3, "dog": 3}, "val": {"cat": 2, "dog": 2}}
    )
    rows = [
        {"split": p.parts[-3], "class": p.parts[-2], "class_num": int(p.parts[-2] == "dog"),
         "im_path": p.relative_to(images).as_posix()}
        for p in sorted(images.rglob("*.png"))
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(root / "dirmap.csv", index=False)
    return root / "dirmap.csv"


def config(endpoint: str, **overrides) -> UploadConfig:
    fields = {"dataset": "Test_Set", "version": f"eps{0.5}", "run": uuid.uuid4().hex[:8]}
    options = {
        "bucket": "lwise-{dataset}-{version}-{run}",
        "endpoint_url": endpoint,
        "region": "eu-west-1",
        "max_workers": 4,
        "backoff_s": 0.01,
    }
    return UploadConfig.from_config(options | overrides, fields=fields)


def client(endpoint: str, region: str = "eu-west-1"):
    return boto3.client("s3", endpoint_url=endpoint, region_name=region)


def upload(tmp_path: Path, cfg: UploadConfig, **kwargs):
    dirmap_csv = tmp_path / "dirmap.csv"
    if not dirmap_csv.exists():
        make_set(tmp_path)
    out_csv, out_json = tmp_path / "out" / "dirmap.csv", tmp_path / "out" / "dirmap.json"
    stats = upload_image_set(dirmap_csv, tmp_path / "images", cfg, out_csv, out_json, **kwargs)
    return stats, out_csv, out_json


class _Body:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **_):
        yield self.data


def fake_error(request, status: int, code: str) -> AWSResponse:
    xml = f"<Error><Code>{code}</Code><Message>injected</Message></Error>"
    return AWSResponse(
        request.url, status, {"Content-Type": "application/xml"}, _Body(xml.encode())
    )


def session_with_hook(event: str, hook) -> boto3.Session:
    session = boto3.Session()
    session.events.register(event, hook)
    return session


# --- names and URLs -----------------------------------------------------------------------------


def test_bucket_name_sanitises_like_lwise():
    assert (
        bucket_name("{p}-{d}-{v}", p="morgan", d="ImageNet16", v="0.5") == "morgan-imagenet16-0dot5"
    )
    assert bucket_name("{d}-{o}", d="HAM10000", o="logit_diverge") == "ham10000-logit-diverge"
    assert bucket_name("x_{v}", v="eps 2.25") == "x-eps-2dot25"


@pytest.mark.parametrize(
    ("template", "message"),
    [("ab", "2 characters"), ("a" * 64, "64 characters"), ("{missing}-x", "no value for field"),
     ("a..b", "contains '..'"), ("sthree-x", "reserves"), ("x_S3alias", "reserves")],
)  # fmt: skip
def test_bucket_name_rejects(template, message):
    with pytest.raises(ValueError, match=message):
        bucket_name(template)


def test_key_prefix_and_urls():
    assert key_prefix("/{v}\\natural/", v="eps0.5") == "eps0.5/natural/"
    assert key_prefix("") == ""
    key = "train/a cat/ü#1.png"
    assert (
        object_url("b", key, region="us-east-1")
        == "https://b.s3.amazonaws.com/train/a%20cat/%C3%BC%231.png"
    )
    assert (
        object_url("b", "k.png", region="eu-west-1") == "https://b.s3.eu-west-1.amazonaws.com/k.png"
    )
    assert object_url("b.x", "k", region="eu-west-1") == "https://s3.eu-west-1.amazonaws.com/b.x/k"
    assert object_url("b", "k", region="x", endpoint_url="http://h:9/") == "http://h:9/b/k"
    assert (
        object_url("b", "k", region="x", endpoint_url="https://h", addressing_style="virtual")
        == "https://b.h/k"
    )


def test_config_rejects_bad_options():
    with pytest.raises(ValueError, match="addressing_style"):
        UploadConfig.from_config({"bucket": "b", "endpoint_url": None, "addressing_style": "dns"})
    with pytest.raises(ValueError, match="kms_key_id needs"):
        UploadConfig.from_config({"bucket": "b", "endpoint_url": None, "kms_key_id": "k"})


# --- uploads against the local server ----------------------------------------------------------


def test_upload_roundtrip_and_rerun_skips(s3_endpoint, tmp_path):
    cfg = config(s3_endpoint)
    stats, out_csv, out_json = upload(tmp_path, cfg)
    assert (stats.uploaded, stats.skipped) == (10, 0)
    assert stats.bucket == cfg.bucket_name and "test-set-eps0dot5" in stats.bucket

    src = pd.read_csv(tmp_path / "dirmap.csv")
    out = pd.read_csv(out_csv)
    assert "url" not in src.columns  # the input is left alone
    assert out.drop(columns=["url", "im_path", "s3_key"]).equals(src.drop(columns="im_path"))
    assert out["s3_key"].equals(src["im_path"])  # object keys are the image keys
    assert len(dirmap.read(out_csv)) == 10  # im_path resolves from the new CSV's folder
    records = json.loads(out_json.read_text())
    assert [r["url"] for r in records] == out["url"].tolist()
    s3 = client(s3_endpoint)
    for row in out.itertuples():
        local = (tmp_path / "images" / row.s3_key).read_bytes()
        assert row.url == f"{s3_endpoint}/{stats.bucket}/{row.s3_key}"
        obj = s3.get_object(Bucket=stats.bucket, Key=row.s3_key)
        assert obj["Body"].read() == local
        assert obj["ContentType"] == "image/png"
        with pytest.raises(urllib.error.HTTPError, match="403"):  # private: anonymous GET fails
            urllib.request.urlopen(row.url)

    again, _, _ = upload(tmp_path, cfg)
    assert (again.uploaded, again.skipped) == (0, 10)

    changed = tmp_path / "images" / out["s3_key"][0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    third, _, _ = upload(tmp_path, cfg)
    assert (third.uploaded, third.skipped) == (1, 9)


def test_bucket_created_in_region_and_private(s3_endpoint, tmp_path):
    cfg = config(s3_endpoint, region="ap-southeast-2")
    stats, out_csv, _ = upload(tmp_path, cfg)
    s3 = client(s3_endpoint, "ap-southeast-2")
    assert s3.get_bucket_location(Bucket=stats.bucket)["LocationConstraint"] == "ap-southeast-2"
    key = pd.read_csv(out_csv)["s3_key"][0]
    grants = s3.get_object_acl(Bucket=stats.bucket, Key=key)["Grants"]
    assert not [g for g in grants if g["Grantee"].get("URI") == ALL_USERS]


def test_public_read_and_encryption_when_asked(s3_endpoint, tmp_path):
    cfg = config(s3_endpoint, public_read=True, sse="AES256")
    stats, out_csv, _ = upload(tmp_path, cfg)
    s3 = client(s3_endpoint)
    key = pd.read_csv(out_csv)["s3_key"][0]
    grants = s3.get_object_acl(Bucket=stats.bucket, Key=key)["Grants"]
    assert {"READ"} == {g["Permission"] for g in grants if g["Grantee"].get("URI") == ALL_USERS}
    with urllib.request.urlopen(pd.read_csv(out_csv)["url"][0]) as response:  # anonymous GET
        assert response.read() == (tmp_path / "images" / key).read_bytes()
    assert s3.head_object(Bucket=stats.bucket, Key=key)["ServerSideEncryption"] == "AES256"
    assert upload(tmp_path, cfg)[0].skipped == 10


def test_one_bucket_with_prefix_per_set(s3_endpoint, tmp_path):
    cfg = config(s3_endpoint, bucket="lwise-shared-{run}", key_prefix="{dataset}/{version}")
    stats, out_csv, _ = upload(tmp_path, cfg)
    assert stats.prefix == "Test_Set/eps0.5/"
    keys = {o["Key"] for o in client(s3_endpoint).list_objects_v2(Bucket=stats.bucket)["Contents"]}
    expected = set(pd.read_csv(out_csv)["s3_key"])
    assert keys == expected and all(k.startswith(stats.prefix) for k in keys)
    assert all(
        u.startswith(f"{s3_endpoint}/{stats.bucket}/Test_Set/eps0.5/")
        for u in pd.read_csv(out_csv)["url"]
    )


def test_failure_midway_then_rerun_completes(s3_endpoint, tmp_path):
    puts = []

    def network_dies_after_four(request, **_):
        puts.append(request.url)
        if len(puts) > 4:
            raise BotoConnectionError(error="injected: network down")

    cfg = config(s3_endpoint, max_workers=1, retries=0)
    session = session_with_hook("before-send.s3.PutObject", network_dies_after_four)
    with pytest.raises(S3UploadError, match=r"dirmap\.csv: line \d+ .*PutObject"):
        upload(tmp_path, cfg, session=session)
    assert not (tmp_path / "out" / "dirmap.csv").exists()
    assert not (tmp_path / "out" / "dirmap.json").exists()

    stats, out_csv, _ = upload(tmp_path, cfg)
    assert (stats.uploaded, stats.skipped) == (6, 4)
    assert len(pd.read_csv(out_csv)) == 10


def test_transient_errors_are_retried(s3_endpoint, tmp_path):
    calls = []

    def flaky(request, **_):
        calls.append(request.url)
        if len(calls) == 1:
            return fake_error(request, 503, "SlowDown")
        if len(calls) == 2:
            raise BotoConnectionError(error="injected: connection reset")
        return None

    cfg = config(s3_endpoint, max_workers=1, retries=2)
    stats, _, _ = upload(
        tmp_path, cfg, session=session_with_hook("before-send.s3.PutObject", flaky)
    )
    assert (stats.uploaded, stats.skipped) == (10, 0)
    assert len(calls) == 12


@pytest.mark.parametrize("operation", ["HeadBucket", "PutObject"])
def test_access_denied_names_bucket_and_operation(s3_endpoint, tmp_path, operation):
    cfg = config(s3_endpoint)
    session = session_with_hook(
        f"before-send.s3.{operation}", lambda request, **_: fake_error(request, 403, "AccessDenied")
    )
    with pytest.raises(S3AccessDenied, match=rf"{operation} on bucket '{cfg.bucket_name}': access"):
        upload(tmp_path, cfg, session=session)


def test_missing_credentials(s3_endpoint, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = config(s3_endpoint)
    with pytest.raises(S3CredentialsError) as err:
        upload(tmp_path, cfg)
    assert cfg.bucket_name in str(err.value)
    assert "AWS_ACCESS_KEY_ID" in str(err.value) and "AWS_PROFILE" in str(err.value)


def test_missing_image_names_the_dirmap_line(s3_endpoint, tmp_path):
    dirmap_csv = make_set(tmp_path)
    third = pd.read_csv(dirmap_csv)["im_path"][2]
    (tmp_path / "images" / third).unlink()
    with pytest.raises(DirmapError, match=r"dirmap\.csv: image file\(s\) missing at line\(s\) 4\b"):
        upload(tmp_path, config(s3_endpoint))


def test_refuses_to_overwrite_input(s3_endpoint, tmp_path):
    dirmap_csv = make_set(tmp_path)
    with pytest.raises(ValueError, match="must not overwrite the input"):
        upload_image_set(
            dirmap_csv, tmp_path / "images", config(s3_endpoint), dirmap_csv, tmp_path / "d.json"
        )


def test_local_s3_server_dies_with_a_killed_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from lwise.publish.s3local import answers, free_port

    port = free_port()
    run = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from lwise.publish.s3local import LocalServer; "
         "LocalServer(int(sys.argv[1]), sys.argv[2]).start(); print('up', flush=True); "
         "time.sleep(120)", str(port), str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert run.stdout.readline().strip() == "up"
    assert answers(f"http://127.0.0.1:{port}/")
    run.send_signal(signal.SIGKILL)  # no onerror/onsuccess handler runs
    run.wait()
    deadline = time.monotonic() + 15
    while answers(f"http://127.0.0.1:{port}/") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not answers(f"http://127.0.0.1:{port}/")


def test_next_run_stops_a_server_left_by_an_earlier_run(tmp_path):
    import subprocess

    from lwise.publish.s3local import LocalServer, answers, free_port, moto_executable

    port = free_port()
    leftover = subprocess.Popen(
        [str(moto_executable()), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        server = LocalServer(port, tmp_path)
        import time

        while not answers(server.url):
            time.sleep(0.1)
        server.pid_file.write_text(str(leftover.pid))  # as the killed run recorded it
        server.start()
        assert leftover.wait(timeout=10) is not None
        assert answers(server.url) and server.proc.pid != leftover.pid
        server.stop()
        assert not server.pid_file.exists()
    finally:
        leftover.kill()
        leftover.wait()


def test_a_port_held_by_something_else_is_still_an_error(tmp_path):
    from httpserver import serve

    from lwise.publish.s3local import LocalServer

    with serve(tmp_path) as other:
        server = LocalServer(other.server_address[1], tmp_path)
        with pytest.raises(RuntimeError, match="already in use"):
            server.start()


def test_rejected_credentials_are_named_as_such_not_as_bucket_ownership(tmp_path, monkeypatch):
    from s3server import moto_s3_server

    monkeypatch.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "0")  # moto checks keys from the start
    with moto_s3_server() as endpoint:
        csv = make_set(tmp_path)
        cfg = config(endpoint)
        with pytest.raises(S3CredentialsError) as err:
            upload_image_set(csv, tmp_path / "images", cfg, tmp_path / "o.csv", tmp_path / "o.json")
    # HEAD replies carry no error code: the ListObjects probe found the rejected key.
    assert str(err.value) == (f"HeadBucket on bucket {cfg.bucket_name!r}: credentials rejected "
                              f"(InvalidAccessKeyId); {CREDENTIALS_HINT}")  # fmt: skip


def test_an_object_whose_etag_is_not_its_md5_is_compared_by_stored_md5(s3_endpoint, tmp_path):
    # Multipart and SSE-KMS objects have ETags that are not the MD5: the stored md5 decides.
    from lwise.publish.s3 import _put_if_changed

    cfg = config(s3_endpoint)
    stats, out_csv, _ = upload(tmp_path, cfg)
    s3 = client(s3_endpoint)
    key = pd.read_csv(out_csv)["s3_key"].iloc[0]
    path = tmp_path / "images" / key
    not_md5 = "0" * 32 + "-2"
    assert _put_if_changed(s3, stats.bucket, key, path, not_md5, {}) is False
    s3.put_object(Bucket=stats.bucket, Key=key, Body=b"older bytes", Metadata={"md5": "1" * 32})
    assert _put_if_changed(s3, stats.bucket, key, path, not_md5, {}) is True
    assert s3.get_object(Bucket=stats.bucket, Key=key)["Body"].read() == path.read_bytes()


# --- issue 13 item 16: survivors of the mutmut 3.8.1 run over lwise/publish/s3.py ----------------


def test_upload_logs_and_shows_what_it_does_and_returns_the_region(s3_endpoint, tmp_path, caplog,
                                                                    capsys):  # fmt: skip
    cfg = config(s3_endpoint)
    with caplog.at_level(logging.INFO, logger="lwise.publish.s3"):
        stats, _, _ = upload(tmp_path, cfg)
    assert stats.region == "eu-west-1"
    messages = [r.getMessage() for r in caplog.records]
    assert f"uploading 10 image(s) to bucket {stats.bucket}, prefix '', endpoint {s3_endpoint}" \
        in messages  # fmt: skip
    assert f"bucket {stats.bucket}: 10 uploaded, 0 already present" in messages
    err = capsys.readouterr().err
    assert f"s3://{stats.bucket}/: 100%" in err and "10/10" in err
    assert re.search(r"[\d.]+(image/s|s/image)\]", err)


def test_the_region_comes_from_the_session_when_the_config_has_none(s3_endpoint, tmp_path):
    cfg = config(s3_endpoint, region=None)
    stats, _, _ = upload(tmp_path, cfg, session=boto3.Session(region_name="eu-central-1"))
    assert stats.region == "eu-central-1"
    location = client(s3_endpoint, "eu-central-1").get_bucket_location(Bucket=stats.bucket)
    assert location["LocationConstraint"] == "eu-central-1"


def test_a_rerun_of_unchanged_images_only_lists_the_bucket(s3_endpoint, tmp_path):
    sent, threads = [], set()

    def record(request, event_name, **_):
        operation = event_name.split(".")[-1]
        sent.append((operation, request.headers.get("Content-MD5")))
        if operation == "PutObject":
            threads.add(threading.get_ident())

    cfg = config(s3_endpoint, max_workers=1)
    session = boto3.Session()
    session.events.register("before-send.s3", record)
    stats, out_csv, _ = upload(tmp_path, cfg, session=session)
    puts = [md5 for op, md5 in sent if op == "PutObject"]
    assert len(puts) == 10 and len(threads) == 1  # max_workers=1: one uploading thread
    keys = pd.read_csv(out_csv)["s3_key"]
    expected = {base64.b64encode(hashlib.md5((tmp_path / "images" / k).read_bytes()).digest())
                for k in keys}  # fmt: skip
    assert set(puts) == expected  # every body goes with its MD5, which S3 checks
    sent.clear()
    assert upload(tmp_path, cfg, session=session)[0].skipped == 10
    assert {op for op, _ in sent} == {"HeadBucket", "ListObjectsV2"}  # no HEAD or PUT per image


def test_upload_files_content_types_and_unreadable_files(s3_endpoint, tmp_path):
    from lwise.publish.s3 import upload_files

    cfg = config(s3_endpoint)
    (tmp_path / "a.lwisedata").write_bytes(b"x")
    (tmp_path / "b.lwisedata").write_bytes(b"y")
    files = [("a.lwisedata", tmp_path / "a.lwisedata", "a"),
             ("b.lwisedata", tmp_path / "b.lwisedata", "b")]  # fmt: skip
    upload_files(files[:1], cfg)
    upload_files(files[1:], cfg, content_type=lambda key: f"text/x-{key[0]}")
    s3 = client(s3_endpoint)
    head = s3.head_object(Bucket=cfg.bucket_name, Key="a.lwisedata")
    assert head["ContentType"] == "application/octet-stream"  # unknown extension
    assert s3.head_object(Bucket=cfg.bucket_name, Key="b.lwisedata")["ContentType"] == "text/x-b"
    missing = [("c.png", tmp_path / "c.png", "site page c")]
    with pytest.raises(S3UploadError, match=r"^site page c: cannot read the file: .*c\.png"):
        upload_files(missing, cfg)


def test_sse_kms_with_a_key_id_is_sent(s3_endpoint, tmp_path):
    cfg = config(s3_endpoint, sse="aws:kms", kms_key_id="alias/lwise-test")
    stats, out_csv, _ = upload(tmp_path, cfg)
    key = pd.read_csv(out_csv)["s3_key"][0]
    head = client(s3_endpoint).head_object(Bucket=stats.bucket, Key=key)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith("alias/lwise-test")


def test_listing_denied_names_the_listbucket_permission(s3_endpoint, tmp_path):
    cfg = config(s3_endpoint)
    session = session_with_hook(
        "before-send.s3.ListObjectsV2",
        lambda request, **_: fake_error(request, 403, "AccessDenied"),
    )
    with pytest.raises(S3AccessDenied, match=rf"^ListBucket on bucket '{cfg.bucket_name}': access "
                                             r"denied \(AccessDenied\)"):  # fmt: skip
        upload(tmp_path, cfg, session=session)


def test_im_path_leaving_the_image_root_names_the_dirmap_and_line(s3_endpoint, tmp_path):
    csv = make_set(tmp_path)
    df = pd.read_csv(csv)
    df.loc[3, "im_path"] = "../outside.png"
    df.to_csv(csv, index=False)
    with pytest.raises(DirmapError, match=r"dirmap\.csv: 'im_path' must be relative and stay "
                                          r"inside the image root \(no '\.\.', no drive\) at "
                                          r"line\(s\) 5$"):  # fmt: skip
        upload(tmp_path, config(s3_endpoint))


def test_an_error_names_the_dirmap_line_and_a_stopped_upload_cancels_the_rest(
    s3_endpoint, tmp_path, caplog
):
    puts = []

    def third_denied(request, **_):
        puts.append(request.url)
        if len(puts) == 3:
            return fake_error(request, 403, "AccessDenied")
        return None

    cfg = config(s3_endpoint, max_workers=1, retries=0)
    csv = make_set(tmp_path)
    third = pd.read_csv(csv)["im_path"][2]
    with caplog.at_level(logging.ERROR, logger="lwise.publish.s3"):
        with pytest.raises(S3AccessDenied, match=rf"dirmap\.csv: line 4 \({third}\): PutObject"):
            upload(tmp_path, cfg, session=session_with_hook("before-send.s3.PutObject",
                                                            third_denied))  # fmt: skip
    # One worker: the first two went through, in order, before the third failed.
    assert [r.getMessage() for r in caplog.records] == [
        "upload stopped after 2 upload(s); a rerun skips what was sent"
    ]
    objects = client(s3_endpoint).list_objects_v2(Bucket=cfg.bucket_name).get("Contents", [])
    assert len(objects) <= 3  # the queued uploads were dropped, not sent after the error


def test_a_connection_failure_outlasting_botocore_is_retried_and_logged(s3_endpoint, tmp_path,
                                                                        caplog):  # fmt: skip
    calls = []

    def down_twice(request, **_):
        calls.append(request.url)
        if len(calls) <= 2:  # both of botocore's attempts (retries=1) of the first upload
            raise BotoConnectionError(error="injected: network down")

    cfg = config(s3_endpoint, max_workers=1, retries=1)
    csv = make_set(tmp_path)
    first = pd.read_csv(csv)["im_path"][0]
    with caplog.at_level(logging.WARNING, logger="lwise.publish.bucket"):
        stats, _, _ = upload(tmp_path, cfg, session=session_with_hook("before-send.s3.PutObject",
                                                                      down_twice))  # fmt: skip
    assert (stats.uploaded, stats.skipped) == (10, 0)
    retried = [r.getMessage() for r in caplog.records]
    assert len(retried) == 1 and retried[0].startswith(f"{csv}: line 2 ({first}): ")
    assert retried[0].endswith("(1/1)")


def test_the_json_keeps_urls_and_names_readable(s3_endpoint, tmp_path):
    csv = make_set(tmp_path)
    df = pd.read_csv(csv)
    df["class"] = df["class"].map({"cat": "chat noir", "dog": "chien été"})
    df.to_csv(csv, index=False)
    stats, _, out_json = upload(tmp_path, config(s3_endpoint))
    text = out_json.read_text(encoding="utf-8")
    assert '"chien été"' in text and "\\u" not in text and "\\/" not in text
    assert f'"url": "{s3_endpoint}/{stats.bucket}/' in text


def test_kms_key_id_with_sse_kms_is_a_valid_config():
    cfg = UploadConfig.from_config(
        {"bucket": "b", "endpoint_url": None, "sse": "aws:kms", "kms_key_id": "k"}
    )
    assert (cfg.sse, cfg.kms_key_id) == ("aws:kms", "k")


# --- issue 13 item 16: survivors of the mutmut 3.8.1 run over lwise/publish/bucket.py ------------


def injected(request, status: int, code: str = "", headers: dict | None = None) -> AWSResponse:
    """A reply the server did not send: `code` as an S3 error body, `headers` added."""
    body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>" if code else ""
    head = {"Content-Type": "application/xml"} | (headers or {})
    return AWSResponse(request.url, status, head, _Body(body.encode()))


def bucket_client(endpoint, cfg, region="eu-west-1", replies=None):
    """make_client on a session whose `replies` ({operation: hook}) replace the server's, and
    the list of operations called, in order."""
    session, sent = boto3.Session(), []
    session.events.register("before-call.s3", lambda event_name, **_: sent.append(
        event_name.split(".")[-1]))  # fmt: skip
    for operation, hook in (replies or {}).items():
        session.events.register(f"before-send.s3.{operation}", hook)
    return make_client(session, cfg, region), sent


def test_the_client_takes_region_retries_pool_and_addressing_from_the_config(s3_endpoint):
    local = make_client(boto3.Session(), config(s3_endpoint, retries=3), "eu-west-1")
    assert local.meta.region_name == "eu-west-1"
    assert local.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert local.meta.config.max_pool_connections == 10  # never below botocore's default
    # A local server: path-style by default, checksums only where the operation requires them.
    assert local.meta.config.s3 == {"addressing_style": "path"}
    assert local.meta.config.request_checksum_calculation == "when_required"
    assert local.meta.config.response_checksum_validation == "when_required"
    wide = config(s3_endpoint, max_workers=32, addressing_style="virtual")
    wide_client = make_client(boto3.Session(), wide, "eu-west-1")
    assert wide_client.meta.config.max_pool_connections == 32
    assert wide_client.meta.config.s3 == {"addressing_style": "virtual"}
    # AWS itself: botocore's own defaults unless a style is asked for.
    aws = make_client(boto3.Session(), config(None), "eu-west-1").meta.config
    assert aws.s3 is None and aws.request_checksum_calculation != "when_required"
    asked = make_client(boto3.Session(), config(None, addressing_style="path"), "eu-west-1")
    assert asked.meta.config.s3 == {"addressing_style": "path"}


def client_error(code: str, message: str = "it went wrong") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "PutObject")


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                                  "InvalidToken"])  # fmt: skip
def test_rejected_credentials_are_explained_with_the_hint(code):
    err = explain(client_error(code), "b", "PutObject", "d.csv: line 3")
    assert type(err) is S3CredentialsError
    assert str(err) == (f"d.csv: line 3: PutObject on bucket 'b': credentials rejected ({code}); "
                        f"{CREDENTIALS_HINT}")  # fmt: skip


@pytest.mark.parametrize("code", ["AccessDenied", "Forbidden", "403", "AllAccessDisabled"])
def test_denials_are_explained_with_the_missing_permission(code):
    err = explain(client_error(code), "b", "GetObject")
    assert type(err) is S3AccessDenied
    assert str(err) == (f"GetObject on bucket 'b': access denied ({code}); the credentials need "
                        "permission s3:GetObject on this bucket")  # fmt: skip


@pytest.mark.parametrize(
    "err",
    [
        NoCredentialsError(),
        PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"),
    ],
)
def test_missing_credentials_are_explained_with_the_hint(err):
    explained = explain(err, "b", "PutObject", "d.csv: line 2")
    assert type(explained) is S3CredentialsError
    assert str(explained) == (f"d.csv: line 2: no usable AWS credentials for bucket 'b' ({err}); "
                              f"{CREDENTIALS_HINT}")  # fmt: skip


def test_other_errors_are_explained_with_their_code_or_repr():
    acl = explain(client_error("AccessControlListNotSupported"), "b", "PutObject")
    assert type(acl) is S3UploadError
    assert str(acl) == (
        "PutObject on bucket 'b': public_read needs object ACLs, but the bucket has them disabled "
        "(Object Ownership = BucketOwnerEnforced); enable ACLs or make the objects public with a "
        "bucket policy and public_read off"
    )
    other = explain(client_error("NoSuchKey", "gone"), "b", "GetObject", "d.csv: line 9")
    assert type(other) is S3UploadError
    assert str(other) == "d.csv: line 9: GetObject on bucket 'b' failed: NoSuchKey gone"
    assert str(explain(ClientError({}, "PutObject"), "b", "PutObject")) == (
        "PutObject on bucket 'b' failed:  "
    )
    plain = explain(ValueError("odd"), "b", "PutObject")
    assert type(plain) is S3UploadError
    assert str(plain) == "PutObject on bucket 'b' failed: ValueError('odd')"


def test_retrying_backs_off_exponentially_with_jitter_then_gives_up(monkeypatch, caplog):
    sleeps, jitter = [], []
    monkeypatch.setattr(bucket.time, "sleep", sleeps.append)
    monkeypatch.setattr(bucket.random, "uniform", lambda a, b: jitter.append((a, b)) or b)
    calls = []

    def down():
        calls.append(1)
        raise BotoConnectionError(error="down")

    with caplog.at_level(logging.WARNING, logger="lwise.publish.bucket"):
        with pytest.raises(BotoConnectionError):
            retrying(down, attempts=3, backoff=0.5, what="file.png")
    assert len(calls) == 4 and sleeps == [0.5, 1.0, 2.0]
    assert jitter == [(0.5, 1.0)] * 3
    assert [r.getMessage() for r in caplog.records] == [
        f"file.png: {BotoConnectionError(error='down')}; retrying in {d}s ({i}/3)"
        for i, d in ((1, "0.5"), (2, "1.0"), (3, "2.0"))
    ]


def test_retrying_returns_the_result_and_retries_only_connection_failures(monkeypatch):
    sleeps = []
    monkeypatch.setattr(bucket.time, "sleep", sleeps.append)
    outcomes = iter([HTTPClientError(error="reset"), BotoConnectionError(error="down"), False])

    def flaky():
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retrying(flaky, attempts=2, backoff=0.1, what="x") is False
    assert len(sleeps) == 2 and 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2
    with pytest.raises(ClientError):
        retrying(lambda: (_ for _ in ()).throw(client_error("AccessDenied")), attempts=5,
                 backoff=0.1, what="x")  # fmt: skip
    with pytest.raises(BotoConnectionError):
        retrying(lambda: (_ for _ in ()).throw(BotoConnectionError(error="d")), attempts=0,
                 backoff=0.1, what="x")  # fmt: skip
    assert len(sleeps) == 2


def test_an_existing_bucket_is_used_as_is_and_one_elsewhere_is_refused(s3_endpoint):
    name = f"lwise-there-{uuid.uuid4().hex[:8]}"
    client(s3_endpoint, "eu-central-1").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"}
    )
    cfg = config(s3_endpoint, public_read=True)
    here, sent = bucket_client(s3_endpoint, cfg, "eu-central-1")
    assert ensure_bucket(here, name, "eu-central-1", cfg) is None
    assert sent == ["HeadBucket"]
    elsewhere, _ = bucket_client(s3_endpoint, cfg, "eu-west-1")
    with pytest.raises(S3UploadError) as err:
        ensure_bucket(elsewhere, name, "eu-west-1", cfg)
    assert str(err.value) == (f"bucket {name!r} is in region 'eu-central-1', not 'eu-west-1'; "
                              "set region: eu-central-1")  # fmt: skip


def test_a_redirect_names_the_bucket_region(s3_endpoint):
    cfg = config(s3_endpoint, retries=0)
    moved = {"HeadBucket": lambda request, **_: injected(
        request, 301, headers={"x-amz-bucket-region": "ap-south-1"})}  # fmt: skip
    s3, _ = bucket_client(s3_endpoint, cfg, replies=moved)
    with pytest.raises(S3UploadError, match=r"^bucket 'lwise-x' is in region 'ap-south-1', not "
                                            r"'eu-west-1'; set region: ap-south-1$"):  # fmt: skip
        ensure_bucket(s3, "lwise-x", "eu-west-1", cfg)


@pytest.mark.parametrize("probe", ["denied", "unreachable"])
def test_a_forbidden_bucket_is_someone_elses_or_not_listable(s3_endpoint, probe):
    cfg = config(s3_endpoint, retries=0)

    def listing(request, **_):
        if probe == "denied":
            return injected(request, 403, "AccessDenied")
        raise BotoConnectionError(error="down")

    replies = {"HeadBucket": lambda request, **_: injected(request, 403), "ListObjectsV2": listing}
    s3, sent = bucket_client(s3_endpoint, cfg, replies=replies)
    with pytest.raises(S3AccessDenied) as err:
        ensure_bucket(s3, "lwise-x", "eu-west-1", cfg)
    assert str(err.value) == (
        "HeadBucket on bucket 'lwise-x': access denied; either another account owns a bucket of "
        "that name (choose another) or the credentials lack s3:ListBucket on it"
    )
    assert sent == ["HeadBucket", "ListObjectsV2"]


def test_other_head_failures_are_explained_not_taken_as_missing(s3_endpoint):
    cfg = config(s3_endpoint, retries=0)
    bad = {"HeadBucket": lambda request, **_: injected(request, 400)}
    s3, sent = bucket_client(s3_endpoint, cfg, replies=bad)
    with pytest.raises(S3UploadError, match=r"^HeadBucket on bucket 'lwise-x' failed: 400 "):
        ensure_bucket(s3, "lwise-x", "eu-west-1", cfg)
    assert sent == ["HeadBucket"]

    def down(request, **_):
        raise BotoConnectionError(error="down")

    s3, sent = bucket_client(s3_endpoint, cfg, replies={"HeadBucket": down})
    with pytest.raises(S3UploadError, match=r"^HeadBucket on bucket 'lwise-x' failed: "
                                            r"ConnectionError"):  # fmt: skip
        ensure_bucket(s3, "lwise-x", "eu-west-1", cfg)
    assert sent == ["HeadBucket"]


@pytest.mark.parametrize("public", [False, True])
def test_a_new_bucket_is_created_in_its_region_with_the_asked_access(s3_endpoint, public, caplog):
    cfg = config(s3_endpoint, public_read=public)
    for region in ("us-east-1", "eu-west-1"):  # us-east-1 refuses an explicit LocationConstraint
        name = f"lwise-new-{uuid.uuid4().hex[:8]}"
        s3, sent = bucket_client(s3_endpoint, cfg, region)
        with caplog.at_level(logging.INFO, logger="lwise.publish.bucket"):
            ensure_bucket(s3, name, region, cfg)
        assert f"created bucket {name} in {region}" in [r.getMessage() for r in caplog.records]
        assert sent == ["HeadBucket", "CreateBucket"] + ["DeletePublicAccessBlock"] * public
        location = s3.get_bucket_location(Bucket=name)["LocationConstraint"]
        assert location == (None if region == "us-east-1" else region)
        if public:
            rules = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
            assert rules == [{"ObjectOwnership": "BucketOwnerPreferred"}]
        else:
            with pytest.raises(ClientError, match="OwnershipControlsNotFound"):
                s3.get_bucket_ownership_controls(Bucket=name)


def test_bucket_creation_races_and_name_clashes(s3_endpoint):
    cfg = config(s3_endpoint, retries=0, public_read=True)

    def creating(code):
        return {"CreateBucket": lambda request, **_: injected(request, 409, code)}

    s3, sent = bucket_client(s3_endpoint, cfg, replies=creating("BucketAlreadyOwnedByYou"))
    assert ensure_bucket(s3, "lwise-mine", "eu-west-1", cfg) is None  # created meanwhile: fine
    assert sent == ["HeadBucket", "CreateBucket"]
    s3, _ = bucket_client(s3_endpoint, cfg, replies=creating("BucketAlreadyExists"))
    with pytest.raises(S3UploadError) as err:
        ensure_bucket(s3, "lwise-theirs", "eu-west-1", cfg)
    assert str(err.value) == (
        "bucket 'lwise-theirs' already exists and belongs to another account; bucket names are "
        "global, so choose another name (template or prefix)"
    )
    s3, _ = bucket_client(s3_endpoint, cfg, replies=creating("TooManyBuckets"))
    with pytest.raises(S3UploadError, match=r"^CreateBucket on bucket 'lwise-many' failed: "
                                            r"TooManyBuckets injected$"):  # fmt: skip
        ensure_bucket(s3, "lwise-many", "eu-west-1", cfg)

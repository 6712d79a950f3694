import hashlib
import io
import tarfile

import pytest
from httpserver import serve

from lwise.data.download import (
    ChecksumError,
    DownloadConfig,
    DownloadError,
    Source,
    download_dataset,
    fetch,
)


def settings(**overrides) -> DownloadConfig:
    return DownloadConfig.from_config(overrides)


def _payload(n=300_000):
    return bytes(range(256)) * (n // 256)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "blob.bin").write_bytes(_payload())
    with serve(root) as server:
        yield server


def test_source_names_and_schemes():
    assert Source("https://h/x/data.tar.gz?dl=1").name == "data.tar.gz"
    assert Source("s3://bucket/a/b.zip").scheme == "s3"
    assert Source("/data/folder").scheme == "local"
    assert Source("file:///data/x.zip").local_path().as_posix() == "/data/x.zip"
    assert Source("https://h/meta.csv").should_extract is False
    assert Source("https://h/dl", filename="imgs.zip").should_extract is True


def test_http_fetch_verifies_sha256_and_md5(served, tmp_path):
    data = _payload()
    src = Source(
        f"{served.url}/blob.bin",
        sha256=hashlib.sha256(data).hexdigest(),
        md5=hashlib.md5(data).hexdigest(),
    )
    path = fetch(src, tmp_path / "dl", settings(backoff=0))
    assert path.read_bytes() == data
    fetch(src, tmp_path / "dl", settings(backoff=0))  # cached: no second request
    assert len(served.requests) == 1


def test_bad_checksum_never_sits_under_final_name(served, tmp_path):
    src = Source(f"{served.url}/blob.bin", sha256="0" * 64)
    with pytest.raises(ChecksumError, match=r"blob.bin: sha256 mismatch .*expected 0{64}, got"):
        fetch(src, tmp_path / "dl", settings(backoff=0))
    assert list((tmp_path / "dl").iterdir()) == []


def test_interrupted_download_resumes_with_range(served, tmp_path):
    served.cut_after, served.cuts_left = 100_000, 1
    data = _payload()
    src = Source(f"{served.url}/blob.bin", sha256=hashlib.sha256(data).hexdigest())
    assert fetch(src, tmp_path / "dl", settings(backoff=0)).read_bytes() == data
    assert [r["range"] for r in served.requests] == [None, "bytes=100000-"]


def test_partial_file_survives_failed_job_and_is_resumed(served, tmp_path):
    served.cut_after, served.cuts_left = 50_000, 1
    src = Source(f"{served.url}/blob.bin")
    with pytest.raises(DownloadError, match="after 1 attempt"):
        fetch(src, tmp_path / "dl", settings(retries=0))
    assert (tmp_path / "dl/blob.bin.part").stat().st_size == 50_000
    assert fetch(src, tmp_path / "dl", settings(retries=0)).read_bytes() == _payload()
    assert served.requests[-1]["range"] == "bytes=50000-"


def test_resumed_download_never_splices_two_versions_of_a_changed_file(served, tmp_path):
    served.cut_after, served.cuts_left = 50_000, 1
    src = Source(f"{served.url}/blob.bin")  # no checksum: only If-Range can tell
    with pytest.raises(DownloadError):
        fetch(src, tmp_path / "dl", settings(retries=0))
    first_etag = served.requests[-1]
    new = bytes(reversed(_payload()))
    (served.root / "blob.bin").write_bytes(new)
    assert fetch(src, tmp_path / "dl", settings(retries=0)).read_bytes() == new
    last = served.requests[-1]
    assert last["range"] == "bytes=50000-" and last["if_range"] is not None
    assert first_etag["if_range"] is None
    assert not list((tmp_path / "dl").glob("*.part*"))


def test_partial_file_without_recorded_version_or_checksum_starts_over(served, tmp_path):
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl/blob.bin.part").write_bytes(b"x" * 1000)  # of unknown origin
    src = Source(f"{served.url}/blob.bin")
    assert fetch(src, tmp_path / "dl", settings(retries=0)).read_bytes() == _payload()
    assert served.requests[-1]["range"] is None


@pytest.mark.parametrize("name", ["../../escaped.tar.gz", "a/b.zip", "..", "/abs.zip", "c\\d.zip"])
def test_source_filename_must_be_one_path_component(name):
    with pytest.raises(ValueError, match="filename"):
        Source("http://127.0.0.1/x.zip", filename=name)


def test_zip_bomb_source_fails_the_job_and_leaves_no_raw_folder(tmp_path):
    import zipfile

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(16 << 20))
    with pytest.raises(ValueError, match="max_expansion_ratio"):
        download_dataset([{"url": str(bomb)}], tmp_path / "raw", tmp_path / "dl")
    assert not (tmp_path / "raw").exists()


def test_http_404_is_not_retried(served, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(Source(f"{served.url}/missing.zip"), tmp_path / "dl", settings(retries=3, backoff=0))
    assert len(served.requests) == 1


def test_local_folder_and_builtin_sources(tmp_path):
    folder = tmp_path / "mine"
    (folder / "train").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("pack/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "pack.tgz").write_bytes(buf.getvalue())
    raw = tmp_path / "raw"
    download_dataset(
        [
            {"url": str(folder)},
            {"url": f"file://{tmp_path / 'pack.tgz'}"},
            {"builtin": "digits", "options": {"size": 8}},
        ],
        raw,
        tmp_path / "dl",
    )
    assert (raw / "mine").is_symlink() and (raw / "mine/train").is_dir()
    assert (raw / "pack/readme.txt").read_text() == "hi"
    assert len(list((raw / "digits").rglob("*.png"))) == 1797
    assert not any(p.name.startswith(".raw.tmp") for p in tmp_path.iterdir())


def test_failed_dataset_leaves_no_raw_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        download_dataset([{"url": str(tmp_path / "nope.zip")}], tmp_path / "raw", tmp_path / "dl")
    assert not (tmp_path / "raw").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_nested_archives_are_extracted_in_place(tmp_path):
    import zipfile

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("ISIC_0000001.jpg", b"jpg")
    outer = tmp_path / "bundle.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.writestr("images_part_1.zip", inner.getvalue())
        zf.writestr("metadata.csv", "a,b\n")
    download_dataset([{"url": str(outer), "nested": True}], tmp_path / "raw", tmp_path / "dl")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "ISIC_0000001.jpg",
        "metadata.csv",
    ]


def test_s3_source_over_the_s3_protocol_with_resume(tmp_path):
    import boto3
    from s3server import moto_s3_server

    data = _payload(200_000)
    with moto_s3_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="raw-data")
        s3.put_object(Bucket="raw-data", Key="sets/blob.bin", Body=data)
        src = Source("s3://raw-data/sets/blob.bin", md5=hashlib.md5(data).hexdigest())
        (tmp_path / "dl").mkdir()
        (tmp_path / "dl/blob.bin.part").write_bytes(data[:50_000])  # an interrupted earlier try
        assert fetch(src, tmp_path / "dl", settings(s3_endpoint_url=endpoint)).read_bytes() == data
        with pytest.raises(DownloadError, match="NoSuchKey"):
            fetch(
                Source("s3://raw-data/missing.zip"),
                tmp_path / "dl",
                settings(s3_endpoint_url=endpoint),
            )

"""gan.files.sha256_of: the one file hash that checkpoints, the Inception weights and BigGAN conversions share."""

from gan.files import sha256_of


def test_sha256_of_known_digests_and_chunking(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")  # FIPS 180-2's example message
    assert sha256_of(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_of(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_of(path, chunk=1) == sha256_of(path)  # byte by byte: the same digest

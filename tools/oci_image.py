#!/usr/bin/env python3
"""Packs the filter module as a Wasm OCI image, without Docker, and pushes it.

    python3 tools/oci_image.py build dist/oob_mirror.wasm dist/oci
    python3 tools/oci_image.py push dist/oci REGISTRY/REPO:TAG [SKOPEO_COPY_FLAG...]

`build` writes one OCI image layout holding the module in both variants that
Istio's image fetcher accepts (pkg/wasm/imagefetcher.go; the variants are the
solo.io Wasm image spec's):

- `oci`: two layers, the runtime config (`application/vnd.module.wasm.config.v1+json`,
  also the manifest's config, as `wasme` pushes it) and the module bytes verbatim
  (`application/vnd.module.wasm.content.layer.v1+wasm`);
- `compat`: one `application/vnd.oci.image.layer.v1.tar+gzip` layer holding
  `plugin.wasm`, a standard image config, annotated `module.wasm.image/variant=compat`.

`index.json` names the two manifests (`org.opencontainers.image.ref.name`) and
`digests.txt` lists their digests, one `<name> sha256:<hex>` line each. For an
`oci://` URL Istio checks a WasmPlugin's `sha256` against the manifest digest.

The output depends only on the module's bytes: fixed tar metadata, gzip without
name or time, JSON with sorted keys. Deflate output is zlib's: stock zlib
gives the same bytes everywhere, zlib-ng (some distributions) does not.

`push` copies the `oci` variant to IMAGE and the `compat` variant to
IMAGE-compat with `skopeo copy --preserve-digests`, and fails unless the
registry stored each manifest under the local digest.

Python standard library only, so it runs wherever python3 does.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"
MEDIA_WASM_CONTENT = "application/vnd.module.wasm.content.layer.v1+wasm"

REF_NAME = "org.opencontainers.image.ref.name"
TITLE = "org.opencontainers.image.title"
# The file name Istio looks for in a compat layer.
PLUGIN_FILE = "plugin.wasm"
RUNTIME_CONFIG_FILE = "runtime-config.json"
VARIANTS = ("oci", "compat")
COMPAT_TAG_SUFFIX = "-compat"

WASM_MAGIC = b"\0asm"
ABI_EXPORT = re.compile(rb"proxy_abi_version_[0-9]+_[0-9]+_[0-9]+")


class Blobs:
    """Content-addressed blobs of one layout, by digest."""

    def __init__(self):
        self.by_digest = {}

    def add(self, media_type, data, annotations=None):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.by_digest[digest] = data
        descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            descriptor["annotations"] = annotations
        return descriptor

    def add_json(self, media_type, value, annotations=None):
        return self.add(media_type, canonical_json(value), annotations)


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def proxy_wasm_abi_versions(wasm):
    """The Proxy-Wasm ABI versions the module exports, e.g. proxy_abi_version_0_2_1."""
    if not wasm.startswith(WASM_MAGIC):
        raise SystemExit("error: not a WebAssembly module (bad magic)")
    versions = sorted({m.decode() for m in ABI_EXPORT.findall(wasm)})
    if not versions:
        raise SystemExit("error: the module exports no proxy_abi_version_*: not a Proxy-Wasm module")
    return versions


def tar_gzip_single_file(name, data):
    """A tar.gz holding one file, with nothing in it that depends on the machine."""
    tar_buffer = io.BytesIO()
    with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = tar_buffer.getvalue()
    gz_buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz_buffer, compresslevel=9, mtime=0) as gz:
        gz.write(tar_bytes)
    return tar_bytes, gz_buffer.getvalue()


def oci_variant(blobs, wasm, abi_versions, root_id):
    runtime_config = {
        "type": "envoy_proxy",
        "abiVersions": abi_versions,
        "config": {"rootIds": [root_id]},
    }
    config = blobs.add_json(MEDIA_WASM_CONFIG, runtime_config)
    config_layer = dict(config, annotations={TITLE: RUNTIME_CONFIG_FILE})
    content_layer = blobs.add(MEDIA_WASM_CONTENT, wasm, {TITLE: PLUGIN_FILE})
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config,
        "layers": [config_layer, content_layer],
        "annotations": {
            "module.wasm.runtime/type": runtime_config["type"],
            "module.wasm.runtime/abi_version": ",".join(abi_versions),
        },
    }


def compat_variant(blobs, wasm):
    tar_bytes, tar_gz = tar_gzip_single_file(PLUGIN_FILE, wasm)
    layer = blobs.add(MEDIA_LAYER_TAR_GZIP, tar_gz)
    image_config = {
        "architecture": "wasm",
        "os": "wasip1",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]},
    }
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": blobs.add_json(MEDIA_IMAGE_CONFIG, image_config),
        "layers": [layer],
        "annotations": {"module.wasm.image/variant": "compat"},
    }


def write_layout(out_dir, blobs, index, digests):
    """Writes the layout next to `out_dir`, then swaps it in: readers never see half of one."""
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        blob_dir = staging / "blobs" / "sha256"
        blob_dir.mkdir(parents=True)
        for digest, data in sorted(blobs.by_digest.items()):
            (blob_dir / digest.removeprefix("sha256:")).write_bytes(data)
        (staging / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))
        (staging / "index.json").write_bytes(canonical_json(index))
        (staging / "digests.txt").write_text("".join(f"{name} {d}\n" for name, d in digests))
        os.chmod(staging, 0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            out_dir.rename(old / "layout")
            staging.rename(out_dir)
            shutil.rmtree(old)
        else:
            staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def build(args):
    wasm = Path(args.wasm).read_bytes()
    abi_versions = proxy_wasm_abi_versions(wasm)
    blobs = Blobs()
    manifests = {
        "oci": oci_variant(blobs, wasm, abi_versions, args.root_id),
        "compat": compat_variant(blobs, wasm),
    }
    index_entries = []
    digests = []
    for name in VARIANTS:
        descriptor = blobs.add_json(MEDIA_MANIFEST, manifests[name], {REF_NAME: name})
        index_entries.append(descriptor)
        digests.append((name, descriptor["digest"]))
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": index_entries}
    write_layout(Path(args.out), blobs, index, digests)

    for name, digest in digests:
        layers = ", ".join(
            f"{layer['mediaType']} {layer['size']} B" for layer in manifests[name]["layers"]
        )
        print(f"{args.out}: {name} {digest} ({layers})")


def local_digests(layout):
    path = Path(layout) / "digests.txt"
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        raise SystemExit(f"error: {path} not found: build the layout first (make oci)")
    digests = dict(line.split(" ", 1) for line in lines if line)
    missing = [name for name in VARIANTS if name not in digests]
    if missing:
        raise SystemExit(f"error: {path} has no digest for {', '.join(missing)}")
    return digests


def check_tagged(image):
    """IMAGE must end in :TAG, since the compat variant goes to TAG-compat."""
    last = image.rsplit("/", 1)[-1]
    if "/" not in image or "@" in image or ":" not in last:
        raise SystemExit(
            f"error: IMAGE={image!r} must be REGISTRY/REPOSITORY:TAG "
            f"(the compat variant is pushed as TAG{COMPAT_TAG_SUFFIX})"
        )


def push(args):
    check_tagged(args.image)
    if shutil.which("skopeo") is None:
        raise SystemExit("error: skopeo not found: run `make setup` as root, or apt-get install skopeo")
    digests = local_digests(args.layout)
    targets = {"oci": args.image, "compat": args.image + COMPAT_TAG_SUFFIX}
    with tempfile.TemporaryDirectory() as tmp:
        for name in VARIANTS:
            digest_file = Path(tmp) / f"{name}.digest"
            command = [
                "skopeo", "copy", "--preserve-digests", "--digestfile", str(digest_file),
                *args.copy_flags,
                f"oci:{args.layout}:{name}", f"docker://{targets[name]}",
            ]
            print("+ " + " ".join(command), flush=True)
            subprocess.run(command, check=True)
            pushed = digest_file.read_text().strip()
            if pushed != digests[name]:
                raise SystemExit(
                    f"error: {targets[name]} was stored as {pushed}, not as the local {digests[name]}"
                )
            print(f"pushed {name}: {targets[name]}@{pushed}", flush=True)
            # For an oci:// URL Istio verifies the WasmPlugin's sha256 against the manifest digest.
            wasm_plugin_sha256 = pushed.removeprefix("sha256:")
            print(f"  WasmPlugin url: oci://{targets[name]}  sha256: {wasm_plugin_sha256}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = parser.add_subparsers(dest="command", required=True)

    build_cmd = commands.add_parser("build", help="write the OCI image layout")
    build_cmd.add_argument("wasm", help="the module, e.g. dist/oob_mirror.wasm")
    build_cmd.add_argument("out", help="the layout directory, e.g. dist/oci (replaced)")
    build_cmd.add_argument("--root-id", default="oob_mirror", help="root_id in the runtime config")
    build_cmd.set_defaults(run=build)

    push_cmd = commands.add_parser("push", help="push both variants with skopeo")
    push_cmd.add_argument("layout", help="the layout directory, e.g. dist/oci")
    push_cmd.add_argument("image", help="REGISTRY/REPOSITORY:TAG for the oci variant")
    push_cmd.add_argument(
        "copy_flags", nargs=argparse.REMAINDER, help="more `skopeo copy` flags, e.g. --dest-tls-verify=false"
    )
    push_cmd.set_defaults(run=push)

    args = parser.parse_args()
    try:
        args.run(args)
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: {' '.join(e.cmd)} exited with {e.returncode}")


if __name__ == "__main__":
    main()

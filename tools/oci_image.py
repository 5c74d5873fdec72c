#!/usr/bin/env python3
"""Packs the filter module as a Wasm OCI image, and the analysis node as a container image,
without Docker, and pushes them.

    python3 tools/oci_image.py build dist/oob_mirror.wasm dist/oci
    python3 tools/oci_image.py push dist/oci REGISTRY/REPO:TAG [SKOPEO_COPY_FLAG...]
    python3 tools/oci_image.py node-image target/release/oob-mirror-node dist/node-oci
    python3 tools/oci_image.py push-node dist/node-oci REGISTRY/REPO:TAG [SKOPEO_COPY_FLAG...]

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

`node-image` writes an OCI image layout (`index.json` names its one manifest
`node`; `digests.txt` has its `node sha256:<hex>` line) of a linux image in
three layers: (1) every shared library `ldd` resolves for the binary and the
dynamic loader, at their real directory under the name the loader asks for
(merged-/usr symlinks such as /lib64 -> usr/lib64 kept), /etc/passwd and
/etc/group with the user `nonroot` (uid and gid 65532), /etc/nsswitch.conf,
/tmp, the empty data directory /var/lib/oob-mirror owned by that user, each
Debian package's copyright file and a list of the packages and versions the
files came from; (2) the CRS rules directory; (3) the binary, at
/usr/local/bin/oob-mirror-node. Its config runs it as 65532 with
`--listen 0.0.0.0:9090 --data-dir /var/lib/oob-mirror` (a Deployment's `args`
add flags; the last of a flag wins). Like the module's, the bytes depend only
on the files packed: entries sorted, mtime 0, no owner names, gzip without
name or time, `created` the epoch. `push-node` pushes it with skopeo and
checks the digest the registry stored.

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

EPOCH = "1970-01-01T00:00:00Z"

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


# --- the analysis node's image ----------------------------------------------------------------
# `node-image` packs target/release/oob-mirror-node as a Linux container image, without Docker:
# the binary, every shared library `ldd` resolves for it (the dynamic loader too), the CRS rules
# directory it includes, and a non-root user owning an empty data directory.

NODE_REF = "node"
NODE_USER, NODE_UID = "nonroot", 65532
NODE_BINARY = "/usr/local/bin/oob-mirror-node"
NODE_DATA_DIR = "/var/lib/oob-mirror"
NODE_PORT = 9090
NODE_ENTRYPOINT = [NODE_BINARY, "--listen", f"0.0.0.0:{NODE_PORT}", "--data-dir", NODE_DATA_DIR]
# The directory the node's --crs defaults to (node/src/analysis/mod.rs): Debian's modsecurity-crs.
NODE_CRS_RULES = "/usr/share/modsecurity-crs/rules"
NODE_PACKAGE_LIST = "/usr/share/doc/oob-mirror-node/packages.txt"
# ELF e_machine -> OCI architecture.
ELF_MACHINES = {0x3E: "amd64", 0xB7: "arm64"}
LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(\S+) \(0x[0-9a-f]+\)$")
DIRECTORY, REGULAR, SYMLINK = "dir", "file", "symlink"


class Tree:
    """A file tree for one layer: absolute path -> entry, parents made as root 0755 dirs."""

    def __init__(self):
        self.entries = {}

    def _parents(self, path):
        parent = os.path.dirname(path)
        if parent != "/" and parent not in self.entries:
            self.add_dir(parent)

    def add_dir(self, path, mode=0o755, uid=0):
        self._parents(path)
        self.entries[path] = (DIRECTORY, mode, uid, None)

    def add_file(self, path, data, mode=0o644):
        if self.entries.get(path, (REGULAR,))[0] != REGULAR:
            raise SystemExit(f"error: {path} is both a file and a {self.entries[path][0]} in the image")
        self._parents(path)
        self.entries[path] = (REGULAR, mode, 0, data)

    def add_symlink(self, path, target):
        self._parents(path)
        self.entries[path] = (SYMLINK, 0o777, 0, target)

    def tar(self):
        """The tar bytes: entries sorted by path (a parent sorts before its children), no time,
        owner names or host metadata."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries):
                kind, mode, uid, payload = self.entries[path]
                info = tarfile.TarInfo(path.lstrip("/"))
                info.mode, info.mtime = mode, 0
                info.uid = info.gid = uid
                info.uname = info.gname = ""
                if kind == DIRECTORY:
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == SYMLINK:
                    info.type, info.linkname = tarfile.SYMTYPE, payload
                    tar.addfile(info)
                else:
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        return buffer.getvalue()


def gzip_bytes(data):
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return out.getvalue()


def elf_architecture(binary):
    head = Path(binary).read_bytes()[:20]
    if head[:4] != b"\x7fELF" or len(head) < 20:
        raise SystemExit(f"error: {binary} is not an ELF executable")
    byteorder = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], byteorder)
    if machine not in ELF_MACHINES:
        raise SystemExit(f"error: {binary}: ELF machine {machine:#x} has no OCI architecture here")
    return ELF_MACHINES[machine]


def shared_libraries(binary):
    """The files `ldd` says the binary loads, the dynamic loader included, as host paths."""
    if shutil.which("ldd") is None:
        raise SystemExit("error: ldd not found (glibc's libc-bin)")
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: ldd {binary}: {(result.stderr or result.stdout).strip()}")
    paths, missing = [], []
    for line in result.stdout.splitlines():
        if "=> not found" in line:
            missing.append(line.split()[0])
            continue
        match = LDD_LINE.match(line)
        if match and match.group(2).startswith("/"):
            paths.append(match.group(2))
        elif line.strip() and "linux-vdso" not in line and "linux-gate" not in line:
            raise SystemExit(f"error: ldd {binary}: a line this tool does not read: {line.strip()!r}")
    if missing:
        raise SystemExit(f"error: {binary} links libraries that are not installed: {', '.join(missing)}"
                         " (`make node` installs libmodsecurity3)")
    if not paths:
        raise SystemExit(f"error: ldd found no shared libraries for {binary}: not a dynamic executable?")
    return paths


def add_host_file(tree, host_path):
    """The host file at host_path, at that path in the image: its directory's real path, the
    file's own name (a library is found by the name the loader asks for, so a soname link
    becomes a regular file holding its target's bytes), and every symlinked directory on
    the way as the same symlink (merged /usr: /lib -> usr/lib, /lib64 -> usr/lib64)."""
    parts = Path(host_path).parts
    for i in range(2, len(parts)):
        prefix = os.path.join(*parts[:i])
        if os.path.islink(prefix):
            tree.add_symlink(prefix, os.readlink(prefix))
    real_dir = os.path.realpath(os.path.dirname(host_path))
    path = os.path.join(real_dir, os.path.basename(host_path))
    mode = os.stat(host_path).st_mode & 0o755
    tree.add_file(path, Path(host_path).read_bytes(), mode | 0o644)
    return path


def debian_packages(paths):
    """{package: version} owning the host files, by dpkg (merged /usr: both spellings asked)."""
    if shutil.which("dpkg-query") is None:
        return {}
    owners = set()
    for path in paths:
        candidates = {path, os.path.realpath(path)}
        for candidate in list(candidates):
            if candidate.startswith("/usr/"):
                candidates.add(candidate[4:])
            else:
                candidates.add("/usr" + candidate)
        for candidate in sorted(candidates):
            found = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
            if found.returncode == 0:
                for line in found.stdout.splitlines():
                    owners.update(p.strip().split(":")[0] for p in line.rsplit(": ", 1)[0].split(","))
                break
        else:
            raise SystemExit(f"error: no Debian package owns {path}: the image would hold a file of "
                             "unknown origin and licence")
    versions = {}
    for package in sorted(owners):
        shown = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package],
                               capture_output=True, text=True, check=True)
        versions[package] = shown.stdout.strip()
    return versions


def node_base_tree():
    """The user, its data directory and what glibc reads at run time."""
    tree = Tree()
    tree.add_file("/etc/passwd", (f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                                  f"{NODE_USER}:x:{NODE_UID}:{NODE_UID}:{NODE_USER}:/home/{NODE_USER}:"
                                  "/usr/sbin/nologin\n").encode())
    tree.add_file("/etc/group", f"root:x:0:\n{NODE_USER}:x:{NODE_UID}:\n".encode())
    # The store's host name (--store postgres://USER@HOST...) is resolved by glibc: /etc/hosts,
    # then DNS (the runtime provides /etc/hosts and /etc/resolv.conf).
    tree.add_file("/etc/nsswitch.conf", b"passwd: files\ngroup: files\nhosts: files dns\n")
    tree.add_dir("/tmp", 0o1777)
    tree.add_dir(f"/home/{NODE_USER}", 0o700, NODE_UID)
    tree.add_dir(NODE_DATA_DIR, 0o700, NODE_UID)
    return tree


def node_image(args):
    binary = Path(args.binary)
    if not binary.is_file():
        raise SystemExit(f"error: {binary} not found: build it first (make node)")
    architecture = elf_architecture(binary)
    crs = Path(args.crs)
    if not (crs / "REQUEST-901-INITIALIZATION.conf").is_file():
        raise SystemExit(f"error: no OWASP CRS rules in {crs} (Debian package modsecurity-crs)")

    base = node_base_tree()
    libraries = shared_libraries(binary)
    for library in libraries:
        add_host_file(base, library)
    crs_tree = Tree()
    crs_files = sorted(p for p in crs.iterdir() if p.is_file())
    for path in crs_files:
        crs_tree.add_file(os.path.join(NODE_CRS_RULES, path.name), path.read_bytes())
    # Where the libraries and rules come from, with each package's licence (Debian keeps it in
    # /usr/share/doc/PKG/copyright).
    packages = debian_packages(libraries + [str(p) for p in crs_files])
    for package in packages:
        copyright_file = Path("/usr/share/doc") / package / "copyright"
        if copyright_file.is_file():
            tree = crs_tree if package == "modsecurity-crs" else base
            tree.add_file(str(copyright_file), copyright_file.read_bytes())
    if packages:
        base.add_file(NODE_PACKAGE_LIST, "".join(f"{p} {v}\n" for p, v in packages.items()).encode())
    node_tree = Tree()
    node_tree.add_file(NODE_BINARY, binary.read_bytes(), 0o755)

    blobs = Blobs()
    layers, diff_ids, history = [], [], []
    for what, tree in (("shared libraries, user, data directory", base),
                       ("OWASP CRS rules", crs_tree),
                       ("oob-mirror-node", node_tree)):
        tar_bytes = tree.tar()
        layers.append(blobs.add(MEDIA_LAYER_TAR_GZIP, gzip_bytes(tar_bytes)))
        diff_ids.append("sha256:" + hashlib.sha256(tar_bytes).hexdigest())
        history.append({"created": EPOCH, "created_by": f"tools/oci_image.py node-image: {what}"})

    labels = {
        "org.opencontainers.image.title": "oob-mirror-node",
        "org.opencontainers.image.description":
            "oob-mirror's analysis node: OWASP CRS by libmodsecurity on mirrored API exchanges",
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    for package, label in (("libmodsecurity3", "modsecurity"), ("modsecurity-crs", "crs")):
        if package in packages:
            labels[f"oob-mirror.{label}.version"] = packages[package]
    image_config = {
        "created": EPOCH,
        "architecture": architecture,
        "os": "linux",
        "config": {
            "User": f"{NODE_UID}:{NODE_UID}",
            "Entrypoint": NODE_ENTRYPOINT,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": NODE_DATA_DIR,
            "ExposedPorts": {f"{NODE_PORT}/tcp": {}},
            "Volumes": {NODE_DATA_DIR: {}},
            "StopSignal": "SIGTERM",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": blobs.add_json(MEDIA_IMAGE_CONFIG, image_config),
        "layers": layers,
        "annotations": {k: v for k, v in labels.items() if k.startswith("org.opencontainers.")},
    }
    descriptor = blobs.add_json(MEDIA_MANIFEST, manifest, {REF_NAME: NODE_REF})
    index = {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [descriptor]}
    write_layout(Path(args.out), blobs, index, [(NODE_REF, descriptor["digest"])])

    size = sum(layer["size"] for layer in layers)
    unpacked = sum(len(entry[3]) for tree in (base, crs_tree, node_tree)
                   for entry in tree.entries.values() if entry[0] == REGULAR)
    print(f"{args.out}: {NODE_REF} {descriptor['digest']} ({architecture}, {len(libraries)} shared "
          f"libraries, {len(crs_files)} CRS files; layers {size} B compressed, {unpacked} B of files)")


def push_node(args):
    if shutil.which("skopeo") is None:
        raise SystemExit("error: skopeo not found: run `make setup` as root, or apt-get install skopeo")
    last = args.image.rsplit("/", 1)[-1]
    if "/" not in args.image or "@" in args.image or ":" not in last:
        raise SystemExit(f"error: NODE_IMAGE={args.image!r} must be REGISTRY/REPOSITORY:TAG")
    path = Path(args.layout) / "digests.txt"
    if not path.is_file():
        raise SystemExit(f"error: {path} not found: build the layout first (make node-image)")
    digest = dict(line.split(" ", 1) for line in path.read_text().splitlines() if line).get(NODE_REF)
    if digest is None:
        raise SystemExit(f"error: {path} has no {NODE_REF} digest")
    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp) / "node.digest"
        command = ["skopeo", "copy", "--preserve-digests", "--digestfile", str(digest_file),
                   *args.copy_flags, f"oci:{args.layout}:{NODE_REF}", f"docker://{args.image}"]
        print("+ " + " ".join(command), flush=True)
        subprocess.run(command, check=True)
        pushed = digest_file.read_text().strip()
    if pushed != digest:
        raise SystemExit(f"error: {args.image} was stored as {pushed}, not as the local {digest}")
    print(f"pushed {NODE_REF}: {args.image}@{pushed}", flush=True)
    # The reference a Deployment pins (make istio NODE_IMAGE=...).
    print(f"  NODE_IMAGE={args.image.rsplit(':', 1)[0]}@{pushed}", flush=True)


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

    node_cmd = commands.add_parser("node-image", help="write the analysis node's image layout")
    node_cmd.add_argument("binary", help="the node, e.g. target/release/oob-mirror-node")
    node_cmd.add_argument("out", help="the layout directory, e.g. dist/node-oci (replaced)")
    node_cmd.add_argument("--crs", default=NODE_CRS_RULES, help="the CRS rules directory to pack")
    node_cmd.add_argument("--version", default="0.1.0", help="org.opencontainers.image.version")
    node_cmd.set_defaults(run=node_image)

    push_node_cmd = commands.add_parser("push-node", help="push the node's image with skopeo")
    push_node_cmd.add_argument("layout", help="the layout directory, e.g. dist/node-oci")
    push_node_cmd.add_argument("image", help="REGISTRY/REPOSITORY:TAG")
    push_node_cmd.add_argument(
        "copy_flags", nargs=argparse.REMAINDER, help="more `skopeo copy` flags, e.g. --dest-tls-verify=false"
    )
    push_node_cmd.set_defaults(run=push_node)

    args = parser.parse_args()
    try:
        args.run(args)
    except subprocess.CalledProcessError as e:
        sys.exit(f"error: {' '.join(e.cmd)} exited with {e.returncode}")


if __name__ == "__main__":
    main()

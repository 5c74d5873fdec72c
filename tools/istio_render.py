#!/usr/bin/env python3
"""Renders the Istio manifest templates of istio/ into a directory.

    istio_render.py TEMPLATES OUT --image REGISTRY/REPO:TAG
                    (--digests dist/oci/digests.txt | --sha256 HEX)
                    [--set NAME=VALUE ...]

Every `${NAME}` in a template is replaced by its value: IMAGE from --image,
IMAGE_SHA256 from the `oci` line of the digests file that `make oci` writes
(`oci sha256:<hex>`: the manifest digest of the image pushed to IMAGE, the one
istio-agent checks), the others from --set. A name without a value is an error,
so nothing is left half rendered. OUT is replaced whole; each rendered file must
parse as YAML.
"""

import argparse
import re
import shutil
import sys
from pathlib import Path

import yaml

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
SHA256_HEX = re.compile(r"^[a-f0-9]{64}$")
# The variant of the image that `make push` pushes to IMAGE itself.
PUSHED_VARIANT = "oci"


def fail(message):
    sys.exit(f"istio_render: {message}")


def digest_from(path):
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[0] == PUSHED_VARIANT:
            algorithm, _, hex_digest = fields[1].partition(":")
            if algorithm == "sha256" and SHA256_HEX.match(hex_digest):
                return hex_digest
            fail(f"{path}: not a sha256 digest: {fields[1]}")
    return fail(f"{path}: no `{PUSHED_VARIANT} sha256:<hex>` line")


def check_image(image):
    if not image:
        fail("--image is empty: give the image `make push` pushed, REGISTRY/REPO:TAG")
    if "://" in image:
        fail(f"--image {image}: give it without a scheme (oci:// is added)")
    # The digest is pinned in `sha256`; a second one in the URL could disagree.
    if "@" in image:
        fail(f"--image {image}: give it with a tag, not a digest")
    if "/" not in image:
        fail(f"--image {image}: expected REGISTRY/REPO[:TAG]")


def render(text, values, where):
    missing = sorted({name for name in PLACEHOLDER.findall(text) if name not in values})
    if missing:
        fail(f"{where}: no value for {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("templates", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", required=True)
    digest = parser.add_mutually_exclusive_group(required=True)
    digest.add_argument("--digests", type=Path, help="digests.txt written by `make oci`")
    digest.add_argument("--sha256", help="manifest digest, 64 hex digits")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()

    check_image(args.image)
    sha256 = digest_from(args.digests) if args.digests else args.sha256
    if not SHA256_HEX.match(sha256):
        fail(f"--sha256 {sha256}: expected 64 lowercase hex digits")
    values = {"IMAGE": args.image, "IMAGE_SHA256": sha256}
    for setting in args.set:
        name, sep, value = setting.partition("=")
        if not sep or not PLACEHOLDER.fullmatch("${" + name + "}"):
            fail(f"--set {setting}: expected NAME=VALUE")
        if not value:
            fail(f"--set {setting}: empty value")
        values[name] = value

    templates = sorted(args.templates.rglob("*.yaml"))
    if not templates:
        fail(f"no *.yaml templates under {args.templates}")
    if args.out.exists():
        shutil.rmtree(args.out)
    for template in templates:
        relative = template.relative_to(args.templates)
        text = template.read_text(encoding="utf-8")
        rendered = render(text, values, template)
        # The templates stay YAML themselves, so editors and linters can read them.
        for what, content in (("is not", text), ("does not render to", rendered)):
            try:
                list(yaml.safe_load_all(content))
            except yaml.YAMLError as err:
                fail(f"{template} {what} YAML: {err}")
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rendered, encoding="utf-8")
        print(f"rendered {target}")


if __name__ == "__main__":
    main()

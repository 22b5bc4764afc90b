# Shared by the testbed scripts: where the image cache lives and which recipe it was built from.
TESTBED_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${CSI_ISCSI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/csi-iscsi}

# The image is keyed on everything that goes into it, so a changed recipe means a new image.
recipe_hash() {
    (cd "$TESTBED_DIR" && cat build-image packages.txt packages-apt.txt requirements.txt guest/*) | sha256sum | cut -c1-16
}
IMAGE_DIR="$CACHE_ROOT/testbed-$(recipe_hash)"

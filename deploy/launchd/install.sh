#!/usr/bin/env bash
# Install KITTY Images as launchd user agents (macOS): images-service, worker and gateway, plus
# Redis (WITH_REDIS=1) and MinIO (WITH_MINIO=1) when asked. Fills the templates next to this script
# into ~/Library/LaunchAgents and loads them with `launchctl bootstrap gui/$UID`.
#
#   deploy/launchd/install.sh                       # or: make launchd-install
#   WITH_REDIS=1 WITH_MINIO=1 deploy/launchd/install.sh
#   DRY_RUN=1 deploy/launchd/install.sh /tmp/plists # any OS: write the filled plists there, load nothing
#
# Settings (environment): VENV (default REPO/.venv), REPO (this checkout), DATA_DIR (IMAGES_DATA_DIR,
# default REPO/var), MODELS_YAML (default DATA_DIR/models.yaml), REDIS_SERVER and MINIO (binaries,
# default: found on PATH). Secrets stay in REPO/.env, which the services read from their working dir.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="${REPO:-$(cd "$HERE/../.." && pwd)}"
VENV="${VENV:-$REPO/.venv}"
DATA_DIR="${DATA_DIR:-${IMAGES_DATA_DIR:-$REPO/var}}"
MODELS_YAML="${MODELS_YAML:-$DATA_DIR/models.yaml}"
DRY_RUN="${DRY_RUN:-0}"
WITH_REDIS="${WITH_REDIS:-0}"
WITH_MINIO="${WITH_MINIO:-0}"
LOG_DIR="$HOME/Library/Logs/kitty-images"
SERVICES=(com.kitty.images-service com.kitty.images-worker com.kitty.images-gateway)

die() { echo "install.sh: $*" >&2; exit 1; }

if [[ "$(uname -s)" != "Darwin" && "$DRY_RUN" != "1" ]]; then
    die "launchd is macOS only (this is $(uname -s)). On Linux use docker compose (make compose-up)
or systemd; to preview the filled plists here: DRY_RUN=1 $0 DIR"
fi

if [[ "$DRY_RUN" == "1" ]]; then
    DEST="${1:-$(mktemp -d)}"
else
    DEST="${1:-$HOME/Library/LaunchAgents}"
fi

# Absolute paths only: launchd runs agents with no shell and no notion of "here".
absolute() { [[ "$1" == /* ]] && echo "$1" || echo "$REPO/$1"; }
VENV="$(absolute "$VENV")"
DATA_DIR="$(absolute "$DATA_DIR")"
MODELS_YAML="$(absolute "$MODELS_YAML")"

for script in images-service images-worker gateway; do
    if [[ ! -x "$VENV/bin/$script" ]]; then
        message="$VENV/bin/$script is missing: run \`make install\` first (or set VENV to your virtualenv)"
        [[ "$DRY_RUN" == "1" ]] && echo "warning: $message" >&2 || die "$message"
    fi
done

LABELS=("${SERVICES[@]}")
if [[ "$WITH_REDIS" == "1" ]]; then
    REDIS_SERVER="${REDIS_SERVER:-$(command -v redis-server || true)}"
    [[ -n "$REDIS_SERVER" ]] || die "WITH_REDIS=1 but no redis-server on PATH: brew install redis, or set REDIS_SERVER"
    LABELS=(com.kitty.redis "${LABELS[@]}")
fi
if [[ "$WITH_MINIO" == "1" ]]; then
    MINIO="${MINIO:-$(command -v minio || true)}"
    [[ -n "$MINIO" ]] || die "WITH_MINIO=1 but no minio on PATH: brew install minio/stable/minio, or set MINIO"
    LABELS=(com.kitty.minio "${LABELS[@]}")
fi
REDIS_SERVER="${REDIS_SERVER:-redis-server}"
MINIO="${MINIO:-minio}"

# A value fit for both XML text and a sed replacement: & < > escaped for XML, then \ | & for sed.
# sed, not bash's ${v//…}: bash 5.2 gives `&` in a replacement a meaning of its own; macOS has 3.2.
escape() {
    printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/[\\|&]/\\&/g'
}

fill() {
    sed -e "s|__VENV__|$(escape "$VENV")|g" \
        -e "s|__REPO__|$(escape "$REPO")|g" \
        -e "s|__HOME__|$(escape "$HOME")|g" \
        -e "s|__DATA_DIR__|$(escape "$DATA_DIR")|g" \
        -e "s|__MODELS_YAML__|$(escape "$MODELS_YAML")|g" \
        -e "s|__REDIS_SERVER__|$(escape "$REDIS_SERVER")|g" \
        -e "s|__MINIO__|$(escape "$MINIO")|g" \
        "$1"
}

run() {
    if [[ "$DRY_RUN" == "1" ]]; then
        echo "would run: $*"
    else
        "$@"
    fi
}

mkdir -p "$DEST"
for label in "${LABELS[@]}"; do
    fill "$HERE/$label.plist" > "$DEST/$label.plist"
    if grep -q '__[A-Z_]*__' "$DEST/$label.plist"; then
        die "$DEST/$label.plist still has an unfilled placeholder: $(grep -o '__[A-Z_]*__' "$DEST/$label.plist" | head -1)"
    fi
    echo "wrote $DEST/$label.plist"
done

run mkdir -p "$LOG_DIR" "$DATA_DIR"
if [[ "$WITH_REDIS" == "1" ]]; then
    run mkdir -p "$DATA_DIR/redis"
fi
if [[ "$WITH_MINIO" == "1" ]]; then
    run mkdir -p "$DATA_DIR/minio"
    if [[ "$DRY_RUN" == "1" ]]; then
        echo "would write $DATA_DIR/minio.env (mode 0600) from S3_ACCESS_KEY and S3_SECRET_KEY, unless it exists"
    elif [[ ! -f "$DATA_DIR/minio.env" ]]; then
        # MinIO's root credentials are the service's S3 credentials; kept in a 0600 file, not the plist.
        [[ -n "${S3_ACCESS_KEY:-}" && -n "${S3_SECRET_KEY:-}" ]] \
            || die "WITH_MINIO=1 needs S3_ACCESS_KEY and S3_SECRET_KEY (8+ characters) set to write $DATA_DIR/minio.env"
        (umask 077 && printf 'MINIO_ROOT_USER=%s\nMINIO_ROOT_PASSWORD=%s\n' "$S3_ACCESS_KEY" "$S3_SECRET_KEY" \
            > "$DATA_DIR/minio.env")
    fi
fi

DOMAIN="gui/$(id -u)"
for label in "${LABELS[@]}"; do
    run plutil -lint "$DEST/$label.plist"
    # A loaded agent refuses a second bootstrap: unload the old one first (absent is fine).
    if [[ "$DRY_RUN" == "1" ]]; then
        echo "would run: launchctl bootout $DOMAIN/$label (if loaded)"
    else
        launchctl bootout "$DOMAIN/$label" 2>/dev/null || true
    fi
    run launchctl bootstrap "$DOMAIN" "$DEST/$label.plist"
done

echo "logs: $LOG_DIR"
[[ "$DRY_RUN" == "1" ]] || echo "check: kitty-images doctor; status: launchctl print $DOMAIN/com.kitty.images-service"

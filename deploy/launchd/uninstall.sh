#!/usr/bin/env bash
# Stop and remove the KITTY Images launchd user agents (all five labels; absent ones are skipped).
# Data (IMAGES_DATA_DIR) and logs (~/Library/Logs/kitty-images) are kept.
#
#   deploy/launchd/uninstall.sh                       # or: make launchd-uninstall
#   DRY_RUN=1 deploy/launchd/uninstall.sh /tmp/plists # any OS: remove the plists there, unload nothing
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
LABELS=(com.kitty.images-gateway com.kitty.images-worker com.kitty.images-service com.kitty.minio com.kitty.redis)

if [[ "$(uname -s)" != "Darwin" && "$DRY_RUN" != "1" ]]; then
    echo "uninstall.sh: launchd is macOS only (this is $(uname -s)); nothing to do. Preview: DRY_RUN=1 $0 DIR" >&2
    exit 1
fi

DEST="${1:-$HOME/Library/LaunchAgents}"
DOMAIN="gui/$(id -u)"
for label in "${LABELS[@]}"; do
    plist="$DEST/$label.plist"
    if [[ "$DRY_RUN" == "1" ]]; then
        echo "would run: launchctl bootout $DOMAIN/$label (if loaded)"
    else
        # Not loaded is fine: the point is that it is not running afterwards.
        launchctl bootout "$DOMAIN/$label" 2>/dev/null || true
    fi
    if [[ -f "$plist" ]]; then
        rm -f "$plist"
        echo "removed $plist"
    fi
done

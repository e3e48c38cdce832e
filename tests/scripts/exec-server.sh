# Launch script in the shape of VS Code Remote-SSH's exec-server mode (the default since 2024).
# remote-ssh-client fills in @ID@ and @COMMIT@ and writes this to the stdin of the ssh
# RemoteCommand. It keeps to POSIX sh, as the real one is run by `sh`; the flags are passed
# through LISTEN_ARGS as the real script does, which is what a by-name rewrite misses.
# Nothing here may read stdin: the shell is reading the script from it.

echo "@ID@: running"

DISTRO_ID="@ID@"
DISTRO_COMMIT="@COMMIT@"
VSCODE_DIR="$HOME/.vscode-server"
CLI_PATH="$VSCODE_DIR/code-$DISTRO_COMMIT"
CLI_DATA_DIR="$VSCODE_DIR/cli"
# Per session, not per commit: parallel test sessions share the home directory.
LOG="$VSCODE_DIR/.cli.$DISTRO_COMMIT.$DISTRO_ID.log"

launch_failed() {
    echo "launch script: $2" >&2
    echo "$DISTRO_ID: start"
    echo "exitCode==$1=="
    echo "$DISTRO_ID: end"
    exit "$1"
}

mkdir -p "$CLI_DATA_DIR" || launch_failed 35 "cannot create $CLI_DATA_DIR"
TEST_SERVER="$(command -v vscode-test-server)" || launch_failed 36 "vscode-test-server is not on PATH"
# Rename over the old link so that a parallel session never finds it missing.
{ ln -s "$TEST_SERVER" "$CLI_PATH.$DISTRO_ID.$$" && mv -fT "$CLI_PATH.$DISTRO_ID.$$" "$CLI_PATH"; } \
    || launch_failed 37 "cannot install $CLI_PATH"

TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
VSCODE_CLI_REQUIRE_TOKEN="$TOKEN"
export VSCODE_CLI_REQUIRE_TOKEN

LISTEN_ARGS="--on-host=127.0.0.1 --on-port"
rm -f "$LOG"
"$CLI_PATH" command-shell --cli-data-dir "$CLI_DATA_DIR" --parent-process-id $$ $LISTEN_ARGS > "$LOG" 2>&1 &
CLI_PID=$!

LISTENING_ON=
WAIT_UNTIL=$(($(date +%s) + 30))
while [ "$(date +%s)" -lt "$WAIT_UNTIL" ]; do
    LISTENING_ON="$(sed -n 's/.*Listening on \([^[:space:]]*\).*/\1/p' "$LOG" 2>/dev/null | head -n 1)"
    [ -n "$LISTENING_ON" ] && break
    kill -0 "$CLI_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$LISTENING_ON" ]; then
    cat "$LOG" >&2
    launch_failed 38 "the exec server did not report where it listens"
fi

OS_RELEASE_ID="$(sed -n 's/^ID=//p' /etc/os-release 2>/dev/null | tr -d '"')"

echo "$DISTRO_ID: start"
echo "exitCode==0=="
echo "listeningOn==$LISTENING_ON=="
echo "osReleaseId==$OS_RELEASE_ID=="
echo "arch==$(uname -m)=="
echo "platform==linux=="
echo "tmpDir==/tmp=="
echo "execServerToken==$TOKEN=="
echo "$DISTRO_ID: end"

# The RemoteCommand must not end: the session lives as long as this script does.
while true; do sleep 180; printf ' '; done

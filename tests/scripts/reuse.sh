# Launch script in the shape of Remote-SSH's legacy mode, with the part the
# reattach tests need: like the real script, it keeps one server per commit
# (pid, log and token files named by the commit only) and reuses that server
# when its process is still alive, instead of starting another one.
# Nothing here may read stdin: bash is reading the script from it.

echo "@ID@: running"

DISTRO_ID="@ID@"
DISTRO_COMMIT="@COMMIT@"
SERVER_DATA_DIR="$HOME/.vscode-server"
SERVER_DIR="$SERVER_DATA_DIR/bin/$DISTRO_COMMIT"
SERVER_SCRIPT="$SERVER_DIR/bin/code-server"
SERVER_LOGFILE="$SERVER_DATA_DIR/.$DISTRO_COMMIT.reuse.log"
SERVER_PIDFILE="$SERVER_DATA_DIR/.$DISTRO_COMMIT.reuse.pid"
TOKEN_FILE="$SERVER_DATA_DIR/.$DISTRO_COMMIT.reuse.token"

launch_failed() {
    echo "launch script: $2" >&2
    echo "$DISTRO_ID: start"
    echo "exitCode==$1=="
    echo "$DISTRO_ID: end"
    exit "$1"
}

listening_port() {
    sed -n 's/.*Extension host agent listening on \([^[:space:]]*\).*/\1/p' "$SERVER_LOGFILE" 2>/dev/null | head -n 1
}

mkdir -p "$SERVER_DIR/bin" || launch_failed 35 "cannot create $SERVER_DIR/bin"
TEST_SERVER="$(command -v vscode-test-server)" || launch_failed 36 "vscode-test-server is not on PATH"
ln -sfT "$TEST_SERVER" "$SERVER_SCRIPT" || launch_failed 37 "cannot install $SERVER_SCRIPT"

# Two windows opened at the same moment run this script at the same moment in
# one job: without a lock both would find no server and start one each, and
# the windows would not share it. So one launch at a time, per commit.
exec 9>"$SERVER_DATA_DIR/.$DISTRO_COMMIT.reuse.lock" || launch_failed 39 "cannot open the launch lock"
flock 9 || launch_failed 39 "cannot take the launch lock"

SERVER_PID="$(cat "$SERVER_PIDFILE" 2>/dev/null)"
LISTENING_ON=
if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "launch script: reusing the server with pid $SERVER_PID" >&2
    LISTENING_ON="$(listening_port)"
    TOKEN="$(cat "$TOKEN_FILE")"
fi
if [[ -z "$LISTENING_ON" ]]; then
    TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    (umask 077 && printf '%s' "$TOKEN" > "$TOKEN_FILE") || launch_failed 37 "cannot write $TOKEN_FILE"
    rm -f "$SERVER_LOGFILE"
    "$SERVER_SCRIPT" --start-server --host=127.0.0.1 --accept-server-license-terms --enable-remote-auto-shutdown --port=0 --connection-token-file "$TOKEN_FILE" &> "$SERVER_LOGFILE" 9>&- &
    SERVER_PID=$!
    echo "$SERVER_PID" > "$SERVER_PIDFILE"
    WAIT_UNTIL=$((SECONDS + 30))
    while ((SECONDS < WAIT_UNTIL)); do
        LISTENING_ON="$(listening_port)"
        [[ -n "$LISTENING_ON" ]] && break
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
fi
exec 9>&-
[[ -n "$LISTENING_ON" ]] || launch_failed 38 "the server did not report a port"

echo "$DISTRO_ID: start"
echo "exitCode==0=="
echo "listeningOn==$LISTENING_ON=="
echo "osReleaseId==debian=="
echo "arch==$(uname -m)=="
echo "platform==linux=="
echo "tmpDir==/tmp=="
echo "connectionToken==$TOKEN=="
echo "$DISTRO_ID: end"

# The RemoteCommand must not end: the session lives as long as this script does.
while true; do sleep 180; printf ' '; done

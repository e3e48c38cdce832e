# Launch script in the shape of VS Code Remote-SSH's legacy mode (remote.SSH.useExecServer=false).
# remote-ssh-client fills in @ID@ and @COMMIT@ and writes this to the stdin of the ssh
# RemoteCommand, which has to run it like `bash` reading a script. The launch line and the
# markers are the parts vscode-slurm must cope with; the rest is kept short.
# Nothing here may read stdin: bash is reading the script from it.

echo "@ID@: running"

DISTRO_ID="@ID@"
DISTRO_COMMIT="@COMMIT@"
SERVER_DATA_DIR="$HOME/.vscode-server"
SERVER_DIR="$SERVER_DATA_DIR/bin/$DISTRO_COMMIT"
SERVER_SCRIPT="$SERVER_DIR/bin/code-server"
# The real script names these per commit. Tests run parallel sessions on one shared home,
# so the session id is part of the names: no session may read another one's listening line.
SERVER_LOGFILE="$SERVER_DATA_DIR/.$DISTRO_COMMIT.$DISTRO_ID.log"
SERVER_PIDFILE="$SERVER_DATA_DIR/.$DISTRO_COMMIT.$DISTRO_ID.pid"
TOKEN_FILE="$SERVER_DATA_DIR/.$DISTRO_COMMIT.$DISTRO_ID.token"

launch_failed() {
    echo "launch script: $2" >&2
    echo "$DISTRO_ID: start"
    echo "exitCode==$1=="
    echo "$DISTRO_ID: end"
    exit "$1"
}

mkdir -p "$SERVER_DIR/bin" || launch_failed 35 "cannot create $SERVER_DIR/bin"
TEST_SERVER="$(command -v vscode-test-server)" || launch_failed 36 "vscode-test-server is not on PATH"
# Rename over the old link so that a parallel session never finds it missing.
{ ln -s "$TEST_SERVER" "$SERVER_SCRIPT.$DISTRO_ID.$$" && mv -fT "$SERVER_SCRIPT.$DISTRO_ID.$$" "$SERVER_SCRIPT"; } \
    || launch_failed 37 "cannot install $SERVER_SCRIPT"

TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
(umask 077 && printf '%s' "$TOKEN" > "$TOKEN_FILE") || launch_failed 37 "cannot write $TOKEN_FILE"

rm -f "$SERVER_LOGFILE"
"$SERVER_SCRIPT" --start-server --host=127.0.0.1 --accept-server-license-terms --enable-remote-auto-shutdown --port=0 --connection-token-file "$TOKEN_FILE" &> "$SERVER_LOGFILE" &
SERVER_PID=$!
echo "$SERVER_PID" > "$SERVER_PIDFILE"

LISTENING_ON=
WAIT_UNTIL=$((SECONDS + 30))
while ((SECONDS < WAIT_UNTIL)); do
    LISTENING_ON="$(sed -n 's/.*Extension host agent listening on \([^[:space:]]*\).*/\1/p' "$SERVER_LOGFILE" 2>/dev/null | head -n 1)"
    [[ -n "$LISTENING_ON" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$LISTENING_ON" ]]; then
    cat "$SERVER_LOGFILE" >&2
    launch_failed 38 "the server did not report a port"
fi

OS_RELEASE_ID="$(sed -n 's/^ID=//p' /etc/os-release 2>/dev/null | tr -d '"')"

echo "$DISTRO_ID: start"
echo "exitCode==0=="
echo "listeningOn==$LISTENING_ON=="
echo "osReleaseId==$OS_RELEASE_ID=="
echo "arch==$(uname -m)=="
echo "platform==linux=="
echo "tmpDir==/tmp=="
echo "connectionToken==$TOKEN=="
echo "$DISTRO_ID: end"

# The RemoteCommand must not end: the session lives as long as this script does.
while true; do sleep 180; printf ' '; done

# Launch script that starts a real VS Code server, code-server, the way a user's launcher would:
# on 127.0.0.1 with a port of its choosing, reporting it in Remote-SSH's result block.
# remote-ssh-client (--template) fills in @ID@ and writes this to the stdin of the ssh
# RemoteCommand, which runs it like `bash` reading a script.
# Nothing here may read stdin: bash is reading the script from it.
#
# The loopback bind below is written out as a user would write it: the job helper adds
# `--socket <a private path>` in front of it on the way in, so code-server listens on a unix
# socket in the job's 0700 runtime directory (it ignores --bind-addr then) and logs that path,
# which is what `listeningOn` reports; the helper's door is the only way in. Without the
# helper, port 0 lets the kernel pick a free port and the port is reported.
#
# code-server is the one tests/install-vscode-deps installs; the compute nodes see the
# machine's /opt.

echo "@ID@: running"

DISTRO_ID="@ID@"
CODE_SERVER=/opt/vscode-slurm-tests/code-server/node_modules/.bin/code-server
SERVER_DATA_DIR="$HOME/.vscode-server"
# Settings, state and extensions, kept between sessions like VS Code's own.
CODE_SERVER_DATA="$SERVER_DATA_DIR/code-server-data"
# Per session: parallel sessions share the home directory.
SERVER_LOGFILE="$SERVER_DATA_DIR/.code-server.$DISTRO_ID.log"

launch_failed() {
    echo "launch script: $2" >&2
    echo "$DISTRO_ID: start"
    echo "exitCode==$1=="
    echo "$DISTRO_ID: end"
    exit "$1"
}

[[ -x "$CODE_SERVER" ]] || launch_failed 36 "code-server is not installed at $CODE_SERVER (run tests/install-vscode-deps)"
mkdir -p "$CODE_SERVER_DATA/user" "$CODE_SERVER_DATA/extensions" || launch_failed 35 "cannot create $CODE_SERVER_DATA"

# --ignore-last-opened: a job may land on another node, or the folder may be gone; the
# client's URL says what to open. --config: keep code-server from writing ~/.config.
rm -f "$SERVER_LOGFILE"
"$CODE_SERVER" --bind-addr 127.0.0.1:0 --auth none --disable-telemetry --disable-update-check \
    --ignore-last-opened --config "$CODE_SERVER_DATA/config.yaml" \
    --user-data-dir "$CODE_SERVER_DATA/user" --extensions-dir "$CODE_SERVER_DATA/extensions" \
    &> "$SERVER_LOGFILE" &
SERVER_PID=$!

LISTENING_ON=
WAIT_UNTIL=$((SECONDS + 60))
while ((SECONDS < WAIT_UNTIL)); do
    # A port, or the socket vscode-job-helper moved the server to.
    LISTENING_ON="$(sed -n -e 's|.*HTTP server listening on http://.*:\([0-9][0-9]*\)/.*|\1|p' \
        -e 's|.*HTTP server listening on \(/[^[:space:]]*\).*|\1|p' "$SERVER_LOGFILE" 2>/dev/null | head -n 1)"
    [[ -n "$LISTENING_ON" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [[ -z "$LISTENING_ON" ]]; then
    cat "$SERVER_LOGFILE" >&2
    launch_failed 38 "code-server did not report a port"
fi

OS_RELEASE_ID="$(sed -n 's/^ID=//p' /etc/os-release 2>/dev/null | tr -d '"')"

echo "$DISTRO_ID: start"
echo "exitCode==0=="
echo "listeningOn==$LISTENING_ON=="
echo "osReleaseId==$OS_RELEASE_ID=="
echo "arch==$(uname -m)=="
echo "platform==linux=="
echo "tmpDir==/tmp=="
echo "$DISTRO_ID: end"

# The RemoteCommand must not end: the session lives as long as this script does.
while true; do sleep 180; printf ' '; done

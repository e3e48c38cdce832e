# Launch script in the shape of the Remote-SSH builds (2025-2026) that run the exec server
# over the launch stream itself: `listeningOn====` is empty, no port is bound, and after the
# end marker the same stdin and stdout carry the server's own protocol. The stand-in server
# says where it runs in one line, then answers every byte it reads with the same byte, so the
# client can prove the stream is passed on untouched. remote-ssh-client fills in @ID@.

echo "@ID@: running"
DISTRO_ID="@ID@"
TOKEN="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
echo "$DISTRO_ID: start"
echo "exitCode==0=="
echo "listeningOn===="
echo "platform==linux=="
echo "arch==$(uname -m)=="
echo "execServerToken==$TOKEN=="
echo "$DISTRO_ID: end"
printf '{"hostname":"%s","job_id":"%s"}\n' "$(hostname)" "${SLURM_JOB_ID:-}"
exec cat

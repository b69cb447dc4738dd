# sysctl_shell — S19 S133 S134
# The kernel's shm sysctls through a shell and the tools: `echo > file` (stdio
# through a dup on descriptor 1, the error reported by the shell), `sysctl -w`,
# `sysctl`, `ipcs -m -l`; the limits written apply to the next program.
K=/proc/sys/kernel
echo "shmmni=$(cat $K/shmmni) rmid_forced=$(cat $K/shm_rmid_forced) next_id=$(cat $K/shm_next_id)"
echo 5 > $K/shm_next_id; echo "echo 5 > shm_next_id: $? -> $(cat $K/shm_next_id)"
echo "ipcmk -M 4096: $(ipcmk -M 4096 2>&1) -> next_id $(cat $K/shm_next_id)"
echo -1 > $K/shm_next_id 2>/dev/null; echo "echo -1 > shm_next_id: $? -> $(cat $K/shm_next_id)"
sysctl kernel.shmmni
sysctl -w kernel.shmmni=7 >/dev/null; echo "sysctl -w kernel.shmmni=7: $?"
sysctl kernel.shmmni
sysctl -w kernel.shmmni=70000 >/dev/null 2>&1; echo "sysctl -w kernel.shmmni=70000: $?"
echo 65536 > $K/shmmax
ipcs -m -l | grep -i "max seg size\|max number of segments"
echo "ipcmk -M 65537: $(ipcmk -M 65537 2>&1 | sed 's/ipcmk: //')"
echo "ipcmk -M 65536: $(ipcmk -M 65536 2>&1 | sed 's/[0-9][0-9]*$/N/')"
ipcrm --all=shm
echo 4096 > $K/shmmni

#!/usr/bin/env bash
# Perl's builtins shmget / shmwrite / shmread / shmctl across two perl processes:
# a writer creates a segment by key and writes a message; a separate reader finds
# it by key, reads the message, checks IPC_STAT (key, size, mode, uid, cpid =
# writer's pid, lpid, nattch), writes a reply; the writer's second run reads the
# reply and removes the segment (IPC_RMID); then the key is gone (ENOENT).
# e2e-timeout: 60
. "$(dirname "$0")/_lib.sh"
command -v perl >/dev/null || skip "perl not installed"

KEY=0x5e2e0001
cat >"$W/shm.pl" <<'PERL'
use strict; use warnings;
use IPC::SysV qw(IPC_CREAT IPC_EXCL IPC_STAT IPC_RMID S_IRUSR S_IWUSR);
use Errno;
my ($role, $key, @rest) = @ARGV;
$key = hex($key);
my $SIZE = 10000;
# struct shmid_ds on x86_64/glibc: ipc_perm {key uid gid cuid cgid mode(u32) seq ...}
# at 0, shm_segsz @48, atime/dtime/ctime @56/64/72, cpid/lpid @80/84, nattch @88.
sub stat_of {
    my ($id) = @_;
    my $buf = "";
    defined shmctl($id, IPC_STAT, $buf) or die "shmctl IPC_STAT: $!";
    my %s;
    @s{qw(key uid gid cuid cgid mode segsz atime dtime ctime cpid lpid nattch)} =
        unpack("l L5 x24 Q q3 l2 Q", $buf);
    return \%s;
}
if ($role eq "create") {
    my $id = shmget($key, $SIZE, IPC_CREAT | IPC_EXCL | 0640) // die "shmget create: $!";
    my $msg = "hello from perl writer $$";
    shmwrite($id, $msg, 0, length $msg) or die "shmwrite: $!";
    shmwrite($id, "\xAB" x 16, $SIZE - 16, 16) or die "shmwrite tail: $!";
    print "created id=$id pid=$$\n";
} elsif ($role eq "read") {
    my ($wpid, $wid) = @rest;
    my $id = shmget($key, 0, 0) // die "shmget by key: $!";
    $id == $wid or die "id by key $id != created id $wid";
    my $buf;
    shmread($id, $buf, 0, 64) or die "shmread: $!";
    $buf =~ s/\0.*//s;
    $buf eq "hello from perl writer $wpid" or die "read '$buf'";
    shmread($id, $buf, $SIZE - 16, 16) or die "shmread tail: $!";
    $buf eq ("\xAB" x 16) or die "tail mismatch";
    my $s = stat_of($id);
    printf "stat key=0x%08x segsz=%d mode=%o uid=%d cuid=%d cpid_is_writer=%d lpid_is_writer=%d nattch=%d atime_set=%d\n",
        $s->{key} & 0xffffffff, $s->{segsz}, $s->{mode} & 0777, $s->{uid}, $s->{cuid},
        $s->{cpid} == $wpid ? 1 : 0, $s->{lpid} == $$ ? 1 : 0, $s->{nattch}, $s->{atime} > 0 ? 1 : 0;
    shmwrite($id, "reply from $$", 100, 20) or die "shmwrite reply: $!";
    print "read ok pid=$$\n";
} elsif ($role eq "finish") {
    my ($rpid) = @rest;
    my $id = shmget($key, 0, 0) // die "shmget: $!";
    my $buf;
    shmread($id, $buf, 100, 20) or die "shmread reply: $!";
    $buf =~ s/\0.*//s;
    $buf eq "reply from $rpid" or die "reply '$buf'";
    shmctl($id, IPC_RMID, 0) or die "IPC_RMID: $!";
    if (defined shmget($key, 0, 0)) { die "key still present after IPC_RMID" }
    print "removed; shmget after IPC_RMID: ", ($!{ENOENT} ? "ENOENT" : "$!"), "\n";
    my $b2 = "";
    print "IPC_STAT of removed id: ", (defined shmctl($id, IPC_STAT, $b2) ? "ok" : ($!{EINVAL} ? "EINVAL" : "$!")), "\n";
}
PERL

out=$(shm perl "$W/shm.pl" create $KEY)
echo "$out"
wid=$(sed -n 's/^created id=\([0-9]*\).*/\1/p' <<<"$out")
wpid=$(sed -n 's/.*pid=\([0-9]*\).*/\1/p' <<<"$out")
[ -n "$wid" ] || die "writer printed no id"

# the reader is a separate process; its pid is needed by the third step
shm perl "$W/shm.pl" read $KEY "$wpid" "$wid" >"$W/read.out" || die "reader failed: $(cat "$W/read.out")"
cat "$W/read.out"
rpid=$(sed -n 's/^read ok pid=\([0-9]*\)$/\1/p' "$W/read.out")
expect "reader's IPC_STAT" "$(grep '^stat' "$W/read.out")" \
    "stat key=$KEY segsz=10000 mode=640 uid=$(id -u) cuid=$(id -u) cpid_is_writer=1 lpid_is_writer=1 nattch=0 atime_set=1"

fin=$(shm perl "$W/shm.pl" finish $KEY "$rpid")
echo "$fin"
expect "after IPC_RMID" "$(tr '\n' ' ' <<<"$fin")" "removed; shmget after IPC_RMID: ENOENT IPC_STAT of removed id: EINVAL "
expect_no_segments "at the end"

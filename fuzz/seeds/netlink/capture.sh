#!/usr/bin/env bash
# Regenerates the netlink seeds: the kernel's reply datagrams to qdisc and
# class dumps of a vmbw-like tree (HTB root 7662:, classes, bfifo leaves) in
# a throw-away namespace, read back from strace. Needs root, iproute2,
# strace and python3.
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
ns="vmbw-fuzzseed-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip -n "$ns" link add veth0 type veth peer name veth1
ip -n "$ns" link set veth0 up
t() { tc -n "$ns" "$@"; }
t qdisc add dev veth0 root handle 7662: htb default 2
t class add dev veth0 parent 7662: classid 7662:1 htb rate 30mbit ceil 30mbit quantum 3750
t class add dev veth0 parent 7662:1 classid 7662:2 htb rate 1mbit ceil 30mbit
t class add dev veth0 parent 7662:1 classid 7662:11 htb rate 15mbit ceil 30mbit prio 1
t class add dev veth0 parent 7662:1 classid 7662:12 htb rate 10mbit ceil 30mbit prio 2
t qdisc replace dev veth0 parent 7662:11 bfifo limit 187500
t qdisc replace dev veth0 parent 7662:12 bfifo limit 187500
for what in qdisc class; do
    trace=$(mktemp)
    strace -X raw -e trace=recvmsg -xx -s 65536 -o "$trace" tc -n "$ns" -s "$what" show dev veth0 >/dev/null
    python3 - "$trace" "$out/$what-dump" <<'PY'
import re, struct, sys
hdr = re.compile(r'\{nlmsg_len=(\d+), nlmsg_type=(0x[0-9a-f]+|\d+), nlmsg_flags=(0x[0-9a-f]+|\d+), '
                 r'nlmsg_seq=(\d+), nlmsg_pid=(\d+)\}, "((?:\\x[0-9a-f]{2})*)"')
n = 0
for line in open(sys.argv[1]):
    msgs = hdr.findall(line)
    if not msgs:
        continue
    data = b''
    for ln, ty, fl, seq, pid, hexs in msgs:
        payload = bytes.fromhex(hexs.replace('\\x', ''))
        m = struct.pack('=IHHII', int(ln), int(ty, 0), int(fl, 0), int(seq), int(pid)) + payload
        data += m + b'\0' * (-len(m) % 4)
    with open(f'{sys.argv[2]}-{n}', 'wb') as f:
        f.write(data)
    n += 1
PY
    rm -f "$trace"
done

#!/usr/bin/env bash
# Regenerates the *.nlmsg fixtures: runs iproute2's `tc` under strace in a
# throw-away network namespace and keeps the netlink request each command
# sends (nlmsg type, flags, and the payload after the 16-byte nlmsghdr).
# tca.rs's unit tests compare vmbw's own HTB/fq encoding with these bytes.
#
# Needs root, iproute2 and strace. The fq commands fail on kernels without
# sch_fq, which does not matter: the request is captured before the kernel
# answers. Usage: sudo ./capture.sh   (writes next to this script)
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
ns="vmbw-capture-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip -n "$ns" link add veth0 type veth peer name veth1 # veth0 gets ifindex 3
ip -n "$ns" link set veth0 up
ifindex=$(ip netns exec "$ns" cat /sys/class/net/veth0/ifindex)

capture() {
    local name=$1
    shift
    local trace
    trace=$(mktemp)
    strace -f -e trace=sendmsg -xx -s 65536 -o "$trace" tc -n "$ns" "$@" || true
    {
        echo "# tc $*"
        echo "# iproute2: $(tc -V | head -1); kernel $(uname -r); veth0 ifindex $ifindex"
        echo "# captured by capture.sh (strace -e trace=sendmsg -xx); payload follows the nlmsghdr"
        perl -ne '
            next unless /nlmsg_type=(0x[0-9a-f]+)[^,]*, nlmsg_flags=([^,]*),.*?\}, "((?:\\x[0-9a-f]{2})*)"\]/;
            my ($type, $fl, $hex) = ($1, $2, $3);
            my %named = (NLM_F_REQUEST => 1, NLM_F_ACK => 4);
            my $flags = 0;
            $flags |= exists $named{$_} ? $named{$_} : hex($_) for split /\|/, $fl;
            $hex =~ s/\\x//g;
            printf "type %s\nflags 0x%x\npayload %s\n", $type, $flags, $hex;
            last;
        ' "$trace"
    } >"$out/$name.nlmsg"
    rm -f "$trace"
}

capture htb_qdisc_add qdisc add dev veth0 root handle 7662: htb default 2
capture htb_class_add class add dev veth0 parent 7662: classid 7662:1 htb \
    rate 10mbit ceil 20mbit burst 15000 cburst 30000 quantum 1514 prio 1
capture htb_class_add_64bit class add dev veth0 parent 7662:1 classid 7662:12 htb \
    rate 40gbit ceil 100gbit burst 6250000 cburst 15625000 quantum 200000 prio 3
capture htb_class_change class change dev veth0 parent 7662: classid 7662:1 htb \
    rate 30mbit ceil 30mbit burst 15000 cburst 15000 quantum 3750 prio 0
capture htb_class_change_odd_rate class change dev veth0 parent 7662: classid 7662:1 htb \
    rate 10000008bit ceil 10000008bit burst 15000 cburst 15001 quantum 125000 prio 7
capture fq_leaf_edt qdisc replace dev veth0 parent 7662:12 fq \
    limit 10000 flow_limit 100 quantum 3028 initial_quantum 15140 horizon 2s horizon_drop
capture fq_leaf_plain qdisc replace dev veth0 parent 7662:12 fq
capture bfifo_leaf qdisc replace dev veth0 parent 7662:12 bfifo limit 187500
capture htb_class_del class del dev veth0 classid 7662:12
capture htb_qdisc_del qdisc del dev veth0 root

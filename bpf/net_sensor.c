/* Network sensor: connect, accept/accept4, bind.
 *
 * At sys_exit the socket's own struct sock is read (fd -> file -> socket -> sk), so the addresses are
 * the kernel's: the local address and ephemeral port a connect or a bind to port 0 got, both ends of an
 * accepted connection, a unix socket's bound name (and its peer's). The sockaddr the caller passed is
 * kept too (read at sys_exit, while the caller's memory is still mapped): it is the only source for a
 * connect that failed and for the path of a unix socket connected to.
 */
#include "fimstream.h"

#define SOCKADDR_MAX 128  /* sizeof(struct sockaddr_storage) */
#define SOCKADDR_MASK 255
#define S_IFMT_ 0170000
#define S_IFSOCK_ 0140000
#define AF_UNIX_ 1
#define AF_INET_ 2
#define AF_INET6_ 10

struct net_body {         /* RK_CONNECT, RK_ACCEPT, RK_BIND; variable part: user sockaddr, local, peer unix names */
    u32 sc;
    s32 fd;               /* the socket (connect, bind) or the listening socket (accept) */
    u64 flags;            /* accept4 flags */
    u16 family;           /* from the kernel's sock; 0 when the fd was not a socket */
    u16 type;             /* SOCK_STREAM, SOCK_DGRAM... */
    u16 protocol;         /* IPPROTO_* */
    u16 state;            /* TCP state */
    u16 lport;            /* host order */
    u16 rport;
    u16 ua_len;           /* bytes of the caller's sockaddr (connect, bind) */
    u16 kl_len;           /* unix: bytes of the socket's own sockaddr_un */
    u16 kr_len;           /* unix: bytes of the peer's sockaddr_un */
    u16 pad[3];
    u8 laddr[16];         /* IPv4 in the first 4 bytes */
    u8 raddr[16];
};

#define BODY(type, s) ((struct type *)((s)->ev + sizeof(struct rec_hdr)))

static __always_inline u16 rd16(u64 addr)
{
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

/* Append up to SOCKADDR_MAX bytes (user or kernel memory); returns how many. */
static __always_inline u16 append_sockaddr(struct scratch *s, u64 ptr, u64 len, int user)
{
    u32 off = s->len;
    if (!ptr || !len || off > EV_VAR_MASK)
        return 0;
    if (len > SOCKADDR_MAX)
        len = SOCKADDR_MAX;
    opaque(len);
    long err = user ? bpf_probe_read_user(&s->ev[off & EV_VAR_MASK], len & SOCKADDR_MASK, (void *)ptr)
                    : bpf_probe_read_kernel(&s->ev[off & EV_VAR_MASK], len & SOCKADDR_MASK, (void *)ptr);
    if (err)
        return 0;
    s->len = off + (len & SOCKADDR_MASK);
    return len & SOCKADDR_MASK;
}

/* A unix socket's bound name: unix_sk(sk)->addr = {refcnt, len, struct sockaddr_un name}. */
static __always_inline u16 append_unix_name(struct scratch *s, u64 sk)
{
    u64 addr = sk ? rd64(sk + O_UNIX_SOCK_ADDR) : 0;
    if (!addr)
        return 0;
    return append_sockaddr(s, addr + O_UNIX_ADDRESS_NAME, rd32(addr + O_UNIX_ADDRESS_LEN), 0);
}

/* family, type, protocol, both ends from the socket behind `file` (after the user sockaddr). */
static __always_inline void read_sock(struct scratch *s, struct net_body *b, u64 file)
{
    if (!file)
        return;
    u64 inode = rd64(file + O_FILE_INODE);
    if ((rd16(inode + O_INODE_MODE) & S_IFMT_) != S_IFSOCK_)
        return;
    u64 sk = rd64(rd64(file + O_FILE_PRIVATE_DATA) + O_SOCKET_SK);
    if (!sk)
        return;
    b->family = rd16(sk + O_SK_FAMILY);
    b->type = rd16(sk + O_SK_TYPE);
    b->protocol = rd16(sk + O_SK_PROTOCOL);
    if (b->family == AF_INET_ || b->family == AF_INET6_) {
        u8 st = 0;
        bpf_probe_read_kernel(&st, 1, (void *)(sk + O_SK_STATE));
        b->state = st;
        b->lport = rd16(sk + O_SK_NUM);
        u16 dport = rd16(sk + O_SK_DPORT);
        b->rport = (dport >> 8) | (dport << 8);
        if (b->family == AF_INET_) {
            bpf_probe_read_kernel(b->laddr, 4, (void *)(sk + O_SK_RCV_SADDR));
            bpf_probe_read_kernel(b->raddr, 4, (void *)(sk + O_SK_DADDR));
        } else {
            bpf_probe_read_kernel(b->laddr, 16, (void *)(sk + O_SK_V6_RCV_SADDR));
            bpf_probe_read_kernel(b->raddr, 16, (void *)(sk + O_SK_V6_DADDR));
        }
    } else if (b->family == AF_UNIX_) {
        b->kl_len = append_unix_name(s, sk);
        b->kr_len = append_unix_name(s, rd64(sk + O_UNIX_SOCK_PEER));
    }
}

/* in: a0 the socket fd, a1 + a2 the caller's sockaddr and its length (connect, bind), a3 accept4 flags. */
static __always_inline int net_exit(struct inflight *in, u32 kind, long ret)
{
    tally(kind, C_SEEN);
    struct scratch *s = scratch_get();
    if (!s)
        return 0;
    u64 task = bpf_get_current_task();
    begin(s, task, kind, sizeof(struct net_body), ret);
    struct net_body *b = BODY(net_body, s);
    __builtin_memset(b, 0, sizeof(*b));
    b->sc = in->sc;
    b->fd = (s32)in->a[0];
    b->flags = in->a[3];
    if (kind != RK_ACCEPT)
        b->ua_len = append_sockaddr(s, in->a[1], (u32)in->a[2], 1);
    s64 sfd = kind == RK_ACCEPT ? ret : (s64)(s32)in->a[0];  /* accept: the new connection's socket */
    if (sfd >= 0)
        read_sock(s, b, fd_file(s, sfd));
    emit(s, kind);
    return 0;
}

/* Traced at sys_exit alone, the arguments read from the saved registers (EXIT_ARGS). */
TP(syscalls, sys_exit_connect)
{
    EXIT_ARGS(RK_CONNECT, SC_CONNECT, REGI(0), REG(1), REGI(2), 0, 0, 0);
    return net_exit(&in, RK_CONNECT, args->ret);
}

TP(syscalls, sys_exit_bind)
{
    EXIT_ARGS(RK_BIND, SC_BIND, REGI(0), REG(1), REGI(2), 0, 0, 0);
    return net_exit(&in, RK_BIND, args->ret);
}

TP(syscalls, sys_exit_accept)
{
    EXIT_ARGS(RK_ACCEPT, SC_ACCEPT, REGI(0), 0, 0, 0, 0, 0);
    return net_exit(&in, RK_ACCEPT, args->ret);
}

TP(syscalls, sys_exit_accept4)
{
    EXIT_ARGS(RK_ACCEPT, SC_ACCEPT4, REGI(0), 0, 0, REGI(3), 0, 0);
    return net_exit(&in, RK_ACCEPT, args->ret);
}

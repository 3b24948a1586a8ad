/*
 * A model, in C, of the fork server's spawn protocol and of one alternative, beside the
 * fork + exit + wait floor: how much of a spawn + join's cost over the floor is the
 * protocol's (the hand-offs between processes) rather than the weight of the processes
 * (docs/DESIGN.md, "Where a spawn's time goes"). Every wait sleeps (poll).
 *
 *   gcc -O2 -o /tmp/spawn_protocol benches/models/spawn_protocol.c
 *   for i in 1 2 3 4 5; do for m in floor server lent lent-channel lent2; do
 *     /tmp/spawn_protocol $m 3000; done; done
 *
 * floor         fork, _exit, waitpid, in a loop.
 * server        multiproc's protocol: the parent makes the child's channel and status
 *               pipe and sends their ends to the server with its request; the server
 *               hands the channel to its spare, answers with the pid, forks the next
 *               spare, reaps the child and writes its status. The parent sends the call
 *               on the channel and reads the outcome and the status.
 * lent          the server lends a spare to the parent ahead (its pid and a connection
 *               to it, and the status pipe's read end); the parent sends the child's
 *               channel and the call to the spare itself and tells the server it took
 *               it, which forks the next and lends it. The server is off the request's
 *               path.
 * lent-channel  as lent, the lent connection serving as the child's channel.
 * lent2         as lent, with two spares lent ahead.
 *
 * MB=n in the environment: the parent writes n MiB of heap first (a heavier process).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 200

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static int pidfd_open(pid_t p) { return (int)syscall(SYS_pidfd_open, p, 0); }
static void die(const char *what) {
  perror(what);
  exit(1);
}
static void wait_readable(int fd) {
  struct pollfd p = {fd, POLLIN, 0};
  while (poll(&p, 1, -1) < 0 && errno == EINTR) {
  }
}
static void send_fds(int s, const void *buf, int len, const int *fds, int n) {
  struct msghdr m = {0};
  struct iovec io = {(void *)buf, (size_t)len};
  char c[CMSG_SPACE(sizeof(int) * 4)];
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  if (n) {
    m.msg_control = c;
    m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int) * n);
    memcpy(CMSG_DATA(h), fds, sizeof(int) * n);
  }
  if (sendmsg(s, &m, MSG_NOSIGNAL) < 0) die("sendmsg");
}
/* Reads one message and up to n descriptors; the length read (0: closed). */
static int recv_fds(int s, void *buf, int len, int *fds, int n) {
  struct msghdr m = {0};
  struct iovec io = {buf, (size_t)len};
  char c[CMSG_SPACE(sizeof(int) * 4)];
  wait_readable(s);
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  m.msg_control = c;
  m.msg_controllen = sizeof c;
  int r = (int)recvmsg(s, &m, 0);
  if (r <= 0) return 0;
  struct cmsghdr *h = CMSG_FIRSTHDR(&m);
  if (h && n) memcpy(fds, CMSG_DATA(h), sizeof(int) * n);
  return r;
}
static void read_some(int fd, void *b, int n) {
  wait_readable(fd);
  if (read(fd, b, n) <= 0) die("read");
}
static void seqpacket_pair(int sv[2]) {
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
}
/* A child: reads the call on its channel, answers, exits. */
static void run_call(int channel) {
  char b[64];
  wait_readable(channel);
  if (read(channel, b, sizeof b) > 0) {
    if (write(channel, "RETURNED", 8) < 0) _exit(1);
  }
  _exit(0);
}

/* ---- server ---- */
static void server_spare(int assign) {
  int fd;
  char b[8];
  if (!recv_fds(assign, b, sizeof b, &fd, 1)) _exit(0);
  close(assign);
  run_call(fd);
}
static pid_t fork_server_spare(int *assign) {
  int sp[2];
  seqpacket_pair(sp);
  pid_t p = fork();
  if (p < 0) die("fork");
  if (!p) {
    close(sp[0]);
    server_spare(sp[1]);
  }
  close(sp[1]);
  *assign = sp[0];
  return p;
}
static void server_loop(int ctl) {
  int assign, running = -1, status = -1;
  pid_t spare = fork_server_spare(&assign);
  for (;;) {
    struct pollfd p[2] = {{ctl, POLLIN, 0}, {running, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) continue;
    if (p[1].revents) {
      siginfo_t si;
      waitid(P_PIDFD, running, &si, WEXITED);
      close(running);
      running = -1;
      if (write(status, "STATUS", 6) < 0) die("write status");
      close(status);
    }
    if (p[0].revents) {
      int fds[2];
      char b[8];
      if (!recv_fds(ctl, b, sizeof b, fds, 2)) {
        /* The parent is done: the spare goes, and every child is reaped here. */
        kill(spare, SIGKILL);
        waitpid(spare, 0, 0);
        if (running >= 0) waitpid(-1, 0, 0);
        _exit(0);
      }
      send_fds(assign, "A", 1, fds, 1);
      close(fds[0]);
      close(assign);
      status = fds[1];
      running = pidfd_open(spare);
      if (write(ctl, &spare, sizeof spare) < 0) die("write answer");
      spare = fork_server_spare(&assign);
    }
  }
}
static double run_server(int n) {
  int ctl[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, ctl) < 0) die("socketpair");
  pid_t s = fork();
  if (!s) {
    close(ctl[0]);
    server_loop(ctl[1]);
  }
  close(ctl[1]);
  double t0 = now();
  for (int i = 0; i < n + WARMUP; i++) {
    if (i == WARMUP) t0 = now();
    int ch[2], st[2];
    char b[8];
    pid_t pid;
    seqpacket_pair(ch);
    if (pipe2(st, O_CLOEXEC) < 0) die("pipe");
    int fds[2] = {ch[1], st[1]};
    send_fds(ctl[0], "F", 1, fds, 2);
    close(ch[1]);
    close(st[1]);
    read_some(ctl[0], &pid, sizeof pid);
    if (write(ch[0], "CALL", 4) < 0) die("write call");
    read_some(ch[0], b, 8);
    read_some(st[0], b, 6);
    close(ch[0]);
    close(st[0]);
  }
  double t = (now() - t0) / n;
  close(ctl[0]);
  waitpid(s, 0, 0);
  return t;
}

/* ---- lent ---- */
static int CHANNEL_IS_LENT = 0;
static void lent_spare(int conn) {
  if (CHANNEL_IS_LENT) run_call(conn);
  int fd;
  char b[8];
  if (!recv_fds(conn, b, sizeof b, &fd, 1)) _exit(0);
  close(conn);
  run_call(fd);
}
/* Forks a spare and lends it: its pid, a connection to it, its status pipe's read end. */
static void lend(int ctl, int *pidfd, int *status) {
  int conn[2], st[2];
  seqpacket_pair(conn);
  if (pipe2(st, O_CLOEXEC) < 0) die("pipe");
  pid_t p = fork();
  if (p < 0) die("fork");
  if (!p) {
    close(conn[0]);
    lent_spare(conn[1]);
  }
  close(conn[1]);
  *pidfd = pidfd_open(p);
  *status = st[1];
  int fds[2] = {conn[0], st[0]};
  send_fds(ctl, &p, sizeof p, fds, 2);
  close(conn[0]);
  close(st[0]);
}
static void lending_loop(int ctl, int ahead) {
  int pidfd[8], status[8], n = 0;
  for (; n < ahead; n++) lend(ctl, &pidfd[n], &status[n]);
  for (;;) {
    struct pollfd p[9];
    p[0] = (struct pollfd){ctl, POLLIN, 0};
    for (int i = 0; i < n; i++) p[i + 1] = (struct pollfd){pidfd[i], POLLIN, 0};
    if (poll(p, n + 1, -1) < 0) continue;
    for (int i = n - 1; i >= 0; i--) {
      if (!p[i + 1].revents) continue;
      siginfo_t si;
      waitid(P_PIDFD, pidfd[i], &si, WEXITED);
      close(pidfd[i]);
      if (write(status[i], "STATUS", 6) < 0) die("write status");
      close(status[i]);
      pidfd[i] = pidfd[n - 1];
      status[i] = status[n - 1];
      n--;
    }
    if (p[0].revents) {
      char b[8];
      if (read(ctl, b, sizeof b) <= 0) {
        /* The parent is done: spares still lent go, and every child is reaped here. */
        for (int i = 0; i < n; i++) {
          siginfo_t si;
          syscall(SYS_pidfd_send_signal, pidfd[i], SIGKILL, NULL, 0);
          waitid(P_PIDFD, pidfd[i], &si, WEXITED);
        }
        _exit(0);
      }
      if (n < 8) {
        lend(ctl, &pidfd[n], &status[n]);
        n++;
      }
    }
  }
}
static double run_lent(int n, int ahead) {
  int ctl[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, ctl) < 0) die("socketpair");
  pid_t s = fork();
  if (!s) {
    close(ctl[0]);
    lending_loop(ctl[1], ahead);
  }
  close(ctl[1]);
  double t0 = now();
  for (int i = 0; i < n + WARMUP; i++) {
    if (i == WARMUP) t0 = now();
    int lent[2];
    pid_t pid;
    char b[8];
    if (!recv_fds(ctl[0], &pid, sizeof pid, lent, 2)) die("lend");
    if (write(ctl[0], "T", 1) < 0) die("write taken");
    if (CHANNEL_IS_LENT) {
      if (write(lent[0], "CALL", 4) < 0) die("write call");
      read_some(lent[0], b, 8);
    } else {
      int ch[2];
      seqpacket_pair(ch);
      send_fds(lent[0], "F", 1, &ch[1], 1);
      close(ch[1]);
      if (write(ch[0], "CALL", 4) < 0) die("write call");
      read_some(ch[0], b, 8);
      close(ch[0]);
    }
    read_some(lent[1], b, 6);
    close(lent[0]);
    close(lent[1]);
  }
  double t = (now() - t0) / n;
  close(ctl[0]);
  waitpid(s, 0, 0);
  return t;
}

static double run_floor(int n) {
  double t0 = now();
  for (int i = 0; i < n + WARMUP; i++) {
    if (i == WARMUP) t0 = now();
    pid_t p = fork();
    if (p < 0) die("fork");
    if (!p) _exit(0);
    waitpid(p, 0, 0);
  }
  return (now() - t0) / n;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s floor|server|lent|lent-channel|lent2 N\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[2]);
  const char *mode = argv[1];
  size_t mb = getenv("MB") ? (size_t)atoi(getenv("MB")) : 0;
  char *heap = malloc((mb << 20) + 1);
  memset(heap, 1, mb << 20);
  double t;
  if (!strcmp(mode, "floor")) t = run_floor(n);
  else if (!strcmp(mode, "server")) t = run_server(n);
  else if (!strcmp(mode, "lent")) t = run_lent(n, 1);
  else if (!strcmp(mode, "lent-channel")) CHANNEL_IS_LENT = 1, t = run_lent(n, 1);
  else if (!strcmp(mode, "lent2")) t = run_lent(n, 2);
  else {
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
  }
  printf("%-13s %7.1f us a spawn + join\n", mode, t * 1e6);
  free(heap);
  return 0;
}

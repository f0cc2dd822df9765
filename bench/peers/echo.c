/* The C echo peer: the ceiling of a CoAP server on one core, for measuring generators.
 *
 * Like echo.py (the uvloop echo) but without Python: every CON request gets an ACK
 * 2.01 carrying its Message ID and token, every NON a NON 2.01 with the token, made by
 * writing a 4-byte header in front of the request's token; everything else is
 * dropped. Datagrams move 64 at a time through recvmmsg/sendmmsg on one socket, so the
 * kernel's UDP path is nearly all it costs; a generator that cannot keep this busy
 * is measuring itself (issue 12: "keeps schedule at 120k requests/s against a C
 * echo").
 *
 * Usage: echo-c --host H --port P [--rcvbuf BYTES]; prints "ready" once bound;
 * SIGTERM or SIGINT ends it. Built on demand by bench/loadgen/native.py with the
 * machine's cc (nothing but libc).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define SLOTS 64
#define SLOT_SIZE 2048
#define CREATED 0x41 /* 2.01 */

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
  (void)sig;
  stop = 1;
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = 5683, rcvbuf = 4 << 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--host"))
      host = argv[i + 1];
    else if (!strcmp(argv[i], "--port"))
      port = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--rcvbuf"))
      rcvbuf = atoi(argv[i + 1]);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal; /* no SA_RESTART: a blocked recvmmsg returns EINTR */
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((unsigned short)port);
  if (fd < 0 || inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    fprintf(stderr, "echo-c: bad host %s\n", host);
    return 2;
  }
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
    fprintf(stderr, "echo-c: bind %s:%d: %s\n", host, port, strerror(errno));
    return 1;
  }
  printf("ready\n");
  fflush(stdout);

  static unsigned char in[SLOTS][SLOT_SIZE], out[SLOTS][16];
  static struct sockaddr_in peers[SLOTS];
  struct mmsghdr rmsg[SLOTS], smsg[SLOTS];
  struct iovec riov[SLOTS], siov[SLOTS];
  for (int i = 0; i < SLOTS; i++) {
    riov[i].iov_base = in[i];
    riov[i].iov_len = SLOT_SIZE;
    memset(&rmsg[i], 0, sizeof rmsg[i]);
    rmsg[i].msg_hdr.msg_iov = &riov[i];
    rmsg[i].msg_hdr.msg_iovlen = 1;
    rmsg[i].msg_hdr.msg_name = &peers[i];
    siov[i].iov_base = out[i];
    memset(&smsg[i], 0, sizeof smsg[i]);
    smsg[i].msg_hdr.msg_iov = &siov[i];
    smsg[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned short mid = 1;
  while (!stop) {
    for (int i = 0; i < SLOTS; i++) rmsg[i].msg_hdr.msg_namelen = sizeof peers[i];
    int n = recvmmsg(fd, rmsg, SLOTS, MSG_WAITFORONE, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("echo-c: recvmmsg");
      return 1;
    }
    int m = 0;
    for (int i = 0; i < n; i++) {
      const unsigned char *d = in[i];
      unsigned len = rmsg[i].msg_len;
      if (len < 4 || d[0] >> 6 != 1) continue;
      unsigned tkl = d[0] & 0x0F, type = (d[0] >> 4) & 3;
      if (tkl > 8 || len < 4 + tkl || d[1] == 0 || type > 1) continue; /* requests only */
      unsigned char *o = out[m];
      if (type == 0) { /* CON -> piggybacked ACK */
        o[0] = (unsigned char)(0x60 | tkl);
        o[2] = d[2];
        o[3] = d[3];
      } else { /* NON -> NON */
        o[0] = (unsigned char)(0x50 | tkl);
        o[2] = (unsigned char)(mid >> 8);
        o[3] = (unsigned char)mid;
        mid++;
      }
      o[1] = CREATED;
      memcpy(o + 4, d + 4, tkl);
      siov[m].iov_len = 4 + tkl;
      smsg[m].msg_hdr.msg_name = &peers[i];
      smsg[m].msg_hdr.msg_namelen = rmsg[i].msg_hdr.msg_namelen;
      m++;
    }
    for (int at = 0; at < m;) {
      int sent = sendmmsg(fd, smsg + at, (unsigned)(m - at), 0);
      if (sent > 0) {
        at += sent;
      } else if (errno == EINTR) {
        continue;
      } else {
        at++; /* refused (an ICMP error came back): skip it, as UDP would */
      }
    }
  }
  close(fd);
  return 0;
}

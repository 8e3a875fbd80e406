/* The lab guest's UDP request/response service (colo-lab chaos, workload udp).
 *
 * Answers every datagram on PORT with "echo " and the datagram's bytes, to the
 * sender, on IPv6 and IPv4 alike (one dual-stack socket; IPv4 alone when the
 * kernel has no IPv6). Deterministic: both replicas answer the same request with
 * the same bytes, so colo-proxy releases the PVM's answer once the SVM's twin
 * came. Busybox's nc has no UDP mode, hence this program; built static by
 * colo_lab/guest.py.
 *
 * usage: colo-udp-echo PORT
 */
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s PORT\n", argv[0]);
		return 2;
	}
	int port = atoi(argv[1]);
	int fd = socket(AF_INET6, SOCK_DGRAM, 0);
	if (fd >= 0) {
		int off = 0;
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
		struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
		if (bind(fd, (struct sockaddr *)&a6, sizeof(a6)) != 0) {
			perror("colo-udp-echo: bind [::]");
			return 1;
		}
	} else {
		fd = socket(AF_INET, SOCK_DGRAM, 0);
		struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port)};
		if (fd < 0 || bind(fd, (struct sockaddr *)&a4, sizeof(a4)) != 0) {
			perror("colo-udp-echo: bind 0.0.0.0");
			return 1;
		}
	}
	static char buf[5 + 65536];
	memcpy(buf, "echo ", 5);
	for (;;) {
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		ssize_t n = recvfrom(fd, buf + 5, sizeof(buf) - 5, 0, (struct sockaddr *)&peer, &plen);
		if (n < 0)
			continue;
		/* A request too long for one answer datagram is answered truncated. */
		size_t len = (size_t)n + 5 > 65507 ? 65507 : (size_t)n + 5;
		sendto(fd, buf, len, 0, (struct sockaddr *)&peer, plen);
	}
}

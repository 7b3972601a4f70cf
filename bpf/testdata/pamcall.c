/*
 * pamcall: a test program that authenticates through the system's libpam,
 * which the tracer's uprobes watch, while holding the inbound TCP connections
 * the test asks for. No libpam headers are needed: libpam is opened with
 * dlopen and the few declarations used are below.
 *
 *   pamcall SERVICE USER PASSWORD INBOUND [v6]
 *
 * It first accepts INBOUND connections on a loopback listener (127.0.0.1, or
 * ::1 with v6) that it makes to itself, each accepted socket also dup()ed so
 * one connection is held through two descriptors; it prints
 * "peer <addr> <port>" for each client end (the remote peer the accepted
 * socket sees), then calls pam_authenticate once and pam_acct_mgmt once, and
 * prints "auth <result>" and "acct <result>". The failure delay that pam_unix
 * asks for is skipped (PAM_FAIL_DELAY), so tests do not sleep.
 */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct pam_message { int msg_style; const char *msg; };
struct pam_response { char *resp; int resp_retcode; };
struct pam_conv {
	int (*conv)(int, const struct pam_message **, struct pam_response **, void *);
	void *appdata_ptr;
};
#define PAM_FAIL_DELAY 10
#define PAM_PROMPT_ECHO_OFF 1

static const char *password;

static int conv(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
	(void)data;
	struct pam_response *r = calloc(n, sizeof(*r));
	if (!r)
		return 5; /* PAM_BUF_ERR */
	for (int i = 0; i < n; i++)
		if (msg[i]->msg_style == PAM_PROMPT_ECHO_OFF)
			r[i].resp = strdup(password);
	*resp = r;
	return 0;
}

static void no_delay(int status, unsigned int usec, void *data)
{
	(void)status; (void)usec; (void)data;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void hold_inbound(int n, int v6)
{
	int fam = v6 ? AF_INET6 : AF_INET;
	struct sockaddr_storage ss = {0};
	socklen_t len;
	if (v6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		len = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*a);
	}
	int l = socket(fam, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&ss, len) || listen(l, 16))
		die("listen");
	if (getsockname(l, (struct sockaddr *)&ss, &len))
		die("getsockname");
	for (int i = 0; i < n; i++) {
		int c = socket(fam, SOCK_STREAM, 0);
		if (c < 0 || connect(c, (struct sockaddr *)&ss, len))
			die("connect");
		int a = accept(l, NULL, NULL);
		if (a < 0 || dup(a) < 0)
			die("accept");
		struct sockaddr_storage peer;
		socklen_t plen = sizeof(peer);
		if (getpeername(a, (struct sockaddr *)&peer, &plen))
			die("getpeername");
		char buf[INET6_ADDRSTRLEN];
		if (v6) {
			struct sockaddr_in6 *p = (struct sockaddr_in6 *)&peer;
			inet_ntop(AF_INET6, &p->sin6_addr, buf, sizeof(buf));
			printf("peer %s %u\n", buf, ntohs(p->sin6_port));
		} else {
			struct sockaddr_in *p = (struct sockaddr_in *)&peer;
			inet_ntop(AF_INET, &p->sin_addr, buf, sizeof(buf));
			printf("peer %s %u\n", buf, ntohs(p->sin_port));
		}
	}
	close(l);
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: pamcall SERVICE USER PASSWORD INBOUND [v6]\n");
		return 2;
	}
	password = argv[3];
	hold_inbound(atoi(argv[4]), argc > 5 && strcmp(argv[5], "v6") == 0);

	void *lib = dlopen("libpam.so.0", RTLD_NOW);
	if (!lib) {
		fprintf(stderr, "dlopen: %s\n", dlerror());
		return 2;
	}
	int (*start)(const char *, const char *, const struct pam_conv *, void **) = dlsym(lib, "pam_start");
	int (*set_item)(void *, int, const void *) = dlsym(lib, "pam_set_item");
	int (*authenticate)(void *, int) = dlsym(lib, "pam_authenticate");
	int (*acct_mgmt)(void *, int) = dlsym(lib, "pam_acct_mgmt");
	int (*end)(void *, int) = dlsym(lib, "pam_end");
	if (!start || !set_item || !authenticate || !acct_mgmt || !end) {
		fprintf(stderr, "dlsym: %s\n", dlerror());
		return 2;
	}
	struct pam_conv c = {conv, NULL};
	void *h = NULL;
	int r = start(argv[1], argv[2], &c, &h);
	if (r != 0) {
		fprintf(stderr, "pam_start: %d\n", r);
		return 2;
	}
	set_item(h, PAM_FAIL_DELAY, (const void *)no_delay);
	r = authenticate(h, 0);
	printf("auth %d\n", r);
	r = acct_mgmt(h, 0);
	printf("acct %d\n", r);
	fflush(stdout);
	end(h, r);
	return 0;
}

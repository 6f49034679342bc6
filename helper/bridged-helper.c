/* SPDX-License-Identifier: MIT */
/*
 * bridged-helper: qemu's bridge-helper protocol, served by bridged over D-Bus.
 *
 * qemu runs "HELPER --use-vnet --fd=N --br=BRIDGE" for -netdev bridge,helper=HELPER,
 * with N one end of a unix socketpair; it reads one byte carrying one fd (SCM_RIGHTS)
 * and then requires exit status 0. qemu-bridge-helper does that as setuid root with an
 * ACL file; this helper has no privilege of its own: it asks bridged for the tap
 * (org.bridged.Bridged1.Manager.OpenTap), so the daemon's policy decides, and the tap
 * vanishes when qemu closes the fd.
 *
 * Written in C on sd-bus because it runs once per VM start and qemu waits for it:
 * a Python interpreter alone costs several times qemu-bridge-helper's whole run
 * (docs/design-changes.md has the figures).
 */

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#ifndef VERSION
#define VERSION "unknown"
#endif

#define BUS_NAME "org.bridged.Bridged1"
#define ROOT_PATH "/org/bridged/Bridged1"
#define MANAGER_IFACE "org.bridged.Bridged1.Manager"
#define BRIDGE_PREFIX ROOT_PATH "/bridge"
#define SYSTEM_BUS_ADDRESS "unix:path=/run/dbus/system_bus_socket"

/* Linux interface names are at most IFNAMSIZ - 1 bytes. */
#define MAX_BRIDGE_NAME 15
/* Enough for any qemu command line worth reading for -name; longer ones are cut at an
 * argument boundary, which at worst loses the label. */
#define MAX_CMDLINE (256 * 1024)

struct options {
	bool use_vnet;
	const char *bridge;      /* NULL: qemu did not say; no check */
	int channel;             /* the socket to qemu */
	const char *bus_address; /* NULL: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus */
};

/* One line on stderr, which qemu shows before "bridge helper failed". Control
 * characters in text that came from elsewhere (the daemon, the bus) become spaces so
 * the message stays one line. */
static void complain(const char *what, const char *detail)
{
	char line[1024];
	int n;

	n = snprintf(line, sizeof(line), "bridged-helper: %s%s%s", what,
		     detail ? ": " : "", detail ? detail : "");
	if (n < 0)
		return;
	for (char *p = line; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = ' ';
	fprintf(stderr, "%s\n", line);
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: bridged-helper [--use-vnet] --br=BRIDGE --fd=N [--bus-address=ADDRESS]\n"
		"\n"
		"qemu bridge helper that gets its tap from bridged: use it as\n"
		"-netdev bridge,id=n0,br=br0,helper=/usr/libexec/bridged-helper.\n"
		"No setuid bit and no /etc/qemu/bridge.conf: the daemon decides who may\n"
		"have a tap (group bridged by default).\n"
		"\n"
		"  --use-vnet             ask for IFF_VNET_HDR\n"
		"  --br=BRIDGE            bridge qemu asked for (must be the one bridged manages)\n"
		"  --fd=N                 unix socket to send the tap fd over (given by qemu)\n"
		"  --bus-address=ADDRESS  D-Bus address (default: $DBUS_SYSTEM_BUS_ADDRESS or\n"
		"                         the system bus)\n"
		"  --help, --version\n");
}

/* 0 and *out set, or -1: a decimal int >= 0 with nothing after it. */
static int parse_fd(const char *text, int *out)
{
	char *end;
	long value;

	errno = 0;
	value = strtol(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0' || value < 0 || value > INT_MAX)
		return -1;
	*out = (int)value;
	return 0;
}

/* 0: run; 1: exit 0 (--help, --version); -1: exit 1 (already said why). */
static int parse_args(int argc, char **argv, struct options *opts)
{
	enum { OPT_USE_VNET = 1, OPT_BR, OPT_FD, OPT_BUS_ADDRESS, OPT_HELP, OPT_VERSION };
	static const struct option longopts[] = {
		{ "use-vnet", no_argument, NULL, OPT_USE_VNET },
		{ "br", required_argument, NULL, OPT_BR },
		{ "fd", required_argument, NULL, OPT_FD },
		{ "bus-address", required_argument, NULL, OPT_BUS_ADDRESS },
		{ "help", no_argument, NULL, OPT_HELP },
		{ "version", no_argument, NULL, OPT_VERSION },
		{ NULL, 0, NULL, 0 },
	};
	bool have_fd = false;
	int c;

	opterr = 0; /* our own one-line messages */
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case OPT_USE_VNET:
			opts->use_vnet = true;
			break;
		case OPT_BR:
			opts->bridge = optarg;
			break;
		case OPT_FD:
			if (parse_fd(optarg, &opts->channel) < 0) {
				complain("--fd needs a file descriptor number, got", optarg);
				return -1;
			}
			have_fd = true;
			break;
		case OPT_BUS_ADDRESS:
			opts->bus_address = optarg;
			break;
		case OPT_HELP:
			usage(stdout);
			return 1;
		case OPT_VERSION:
			printf("bridged-helper %s\n", VERSION);
			return 1;
		default: {
			/* optopt is a bad short option's letter; otherwise it is 0 or one of
			 * our (non-printable) long option values, and the argument just
			 * consumed is the culprit. */
			char shown[3] = { '-', (char)optopt, '\0' };
			bool short_option = optopt > ' ' && optopt < 0x7f;

			complain("unknown option or missing value (see --help)",
				 short_option ? shown : argv[optind - 1]);
			return -1;
		}
		}
	}
	if (optind < argc) {
		complain("unexpected argument", argv[optind]);
		return -1;
	}
	if (!have_fd) {
		complain("--fd=N is required (qemu passes it)", NULL);
		return -1;
	}
	if (opts->bridge && (opts->bridge[0] == '\0' || strlen(opts->bridge) > MAX_BRIDGE_NAME)) {
		complain("not a bridge name", opts->bridge);
		return -1;
	}
	return 0;
}

/* qemu's end of the socketpair must be a socket we can write to; checked before a tap
 * is asked for, so a wrong --fd never makes one. */
static int check_channel(int fd)
{
	struct stat st;
	char number[16];

	snprintf(number, sizeof(number), "%d", fd);
	if (fstat(fd, &st) < 0) {
		complain("--fd is not an open file descriptor", number);
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		complain("--fd is not a socket", number);
		return -1;
	}
	return 0;
}

/* How many bytes at s (n > 0 left) form the next character, and whether it is valid
 * UTF-8. An invalid stretch is the longest start of a valid sequence there, or one
 * byte (Unicode's "maximal subpart", which Python's errors="replace" also uses), so
 * each becomes one U+FFFD. */
static size_t utf8_next(const unsigned char *s, size_t n, bool *valid)
{
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len, i;

	*valid = false;
	if (s[0] < 0x80) {
		*valid = true;
		return 1;
	}
	if (s[0] >= 0xc2 && s[0] <= 0xdf)
		len = 2;
	else if (s[0] >= 0xe0 && s[0] <= 0xef)
		len = 3;
	else if (s[0] >= 0xf0 && s[0] <= 0xf4)
		len = 4;
	else
		return 1;
	/* The second byte's range excludes overlong forms, surrogates, > U+10FFFF. */
	if (s[0] == 0xe0)
		lo = 0xa0;
	else if (s[0] == 0xed)
		hi = 0x9f;
	else if (s[0] == 0xf0)
		lo = 0x90;
	else if (s[0] == 0xf4)
		hi = 0x8f;
	for (i = 1; i < len; i++) {
		if (i >= n || s[i] < lo || s[i] > hi)
			return i;
		lo = 0x80;
		hi = 0xbf;
	}
	*valid = true;
	return len;
}

/* A D-Bus string (valid UTF-8, as the wire format requires) from bytes of unknown
 * encoding, invalid stretches replaced by U+FFFD. NULL if out of memory. */
static char *utf8_copy(const char *text, size_t n)
{
	const unsigned char *s = (const unsigned char *)text;
	char *out, *t;

	if (n > (SIZE_MAX - 1) / 3)
		return NULL;
	out = malloc(n * 3 + 1);
	if (!out)
		return NULL;
	t = out;
	for (size_t i = 0; i < n;) {
		bool valid;
		size_t len = utf8_next(s + i, n - i, &valid);

		if (valid) {
			memcpy(t, s + i, len);
			t += len;
		} else {
			memcpy(t, "\xef\xbf\xbd", 3);
			t += 3;
		}
		i += len;
	}
	*t = '\0';
	return out;
}

/* The guest name in qemu's "-name NAME" or "-name guest=NAME,...", as
 * bridged/qemu.py guest_name() reads it: a pointer into value and its length, or
 * NULL. */
static const char *name_in_value(const char *value, size_t *len)
{
	const char *part = value;

	for (;;) {
		const char *comma = strchr(part, ',');
		size_t plen = comma ? (size_t)(comma - part) : strlen(part);

		if (plen >= 6 && strncmp(part, "guest=", 6) == 0) {
			*len = plen - 6;
			return *len ? part + 6 : NULL;
		}
		if (!comma)
			break;
		part = comma + 1;
	}
	/* No guest=: the first part is the name unless it is another key=value. */
	*len = strcspn(value, ",");
	if (*len == 0 || memchr(value, '=', *len))
		return NULL;
	return value;
}

/* The label for the tap: the -name of the qemu that ran us (our parent). NULL when
 * there is none or it cannot be read; the label is optional, so that is no error. */
static char *parent_guest_name(void)
{
	char path[64], *buf, *label = NULL;
	size_t used = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%ld/cmdline", (long)getppid());
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	buf = malloc(MAX_CMDLINE + 1);
	if (!buf) {
		close(fd);
		return NULL;
	}
	while (used < MAX_CMDLINE) {
		ssize_t n = read(fd, buf + used, MAX_CMDLINE - used);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		used += (size_t)n;
	}
	close(fd);
	/* Whole arguments only: a cut-off last one, or one not ended by NUL, is dropped. */
	while (used > 0 && buf[used - 1] != '\0')
		used--;
	buf[used] = '\0';

	for (size_t i = 0; i < used;) {
		const char *arg = buf + i;
		size_t next = i + strlen(arg) + 1;

		if ((strcmp(arg, "-name") == 0 || strcmp(arg, "--name") == 0)) {
			const char *name = NULL;
			size_t len = 0;

			if (next < used)
				name = name_in_value(buf + next, &len);
			if (name)
				label = utf8_copy(name, len);
			break;
		}
		i = next;
	}
	free(buf);
	return label;
}

static const char *error_text(const sd_bus_error *error, int r)
{
	if (sd_bus_error_has_names(error, "org.freedesktop.DBus.Error.ServiceUnknown",
				   "org.freedesktop.DBus.Error.NameHasNoOwner"))
		return "bridged is not running (no owner of " BUS_NAME " on the bus)";
	if (sd_bus_error_has_name(error, SD_BUS_ERROR_NO_REPLY) || r == -ETIMEDOUT)
		return "bridged did not answer";
	if (error->message && error->message[0])
		return error->message;
	if (error->name)
		return error->name;
	return strerror(-r);
}

/* Refuses unless --br names the bridge bridged manages. The Manager's Bridge property
 * is that bridge's object path, whose last element is the name escaped as systemd's
 * bus_label_escape does; sd_bus_path_decode undoes it, so no second call is needed. */
static int check_bridge(sd_bus *bus, const char *wanted)
{
	sd_bus_error error = SD_BUS_ERROR_NULL;
	sd_bus_message *reply = NULL;
	const char *path;
	char *managed = NULL, message[256];
	int r, ret = -1;

	r = sd_bus_get_property(bus, BUS_NAME, ROOT_PATH, MANAGER_IFACE, "Bridge", &error,
				&reply, "o");
	if (r < 0) {
		complain(error_text(&error, r), NULL);
		goto out;
	}
	r = sd_bus_message_read(reply, "o", &path);
	if (r < 0) {
		complain("cannot read bridged's Bridge property", strerror(-r));
		goto out;
	}
	r = sd_bus_path_decode(path, BRIDGE_PREFIX, &managed);
	if (r < 0) {
		complain("cannot decode bridged's bridge path", strerror(-r));
		goto out;
	}
	if (r == 0 || !managed) {
		complain("bridged reported an unexpected bridge object path", path);
		goto out;
	}
	if (strcmp(managed, wanted) != 0) {
		snprintf(message, sizeof(message),
			 "bridged manages bridge %s, not %s; use -netdev bridge,br=%s",
			 managed, wanted, managed);
		complain(message, NULL);
		goto out;
	}
	ret = 0;
out:
	free(managed);
	sd_bus_message_unref(reply);
	sd_bus_error_free(&error);
	return ret;
}

static int append_options(sd_bus_message *m, bool use_vnet, const char *label)
{
	int r;

	r = sd_bus_message_open_container(m, 'a', "{sv}");
	if (r >= 0)
		r = sd_bus_message_append(m, "{sv}", "vnet_hdr", "b", (int)use_vnet);
	if (r >= 0 && label)
		r = sd_bus_message_append(m, "{sv}", "label", "s", label);
	if (r >= 0)
		r = sd_bus_message_close_container(m);
	return r;
}

/* One byte with one fd, as qemu's recv_fd() reads it. */
static int send_fd(int channel, int fd)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} control;
	char byte = 0;
	struct iovec iov = { .iov_base = &byte, .iov_len = 1 };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};
	struct cmsghdr *cmsg;
	ssize_t n;

	memset(&control, 0, sizeof(control));
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	do {
		/* MSG_NOSIGNAL: if qemu is gone, an error, not SIGPIPE. */
		n = sendmsg(channel, &msg, MSG_NOSIGNAL);
	} while (n < 0 && errno == EINTR);
	return n == 1 ? 0 : -1;
}

/* Asks bridged for the tap and hands its fd to qemu. The fd belongs to the reply
 * message; unreferencing the message closes it (and any other fd the reply carried)
 * on every path. */
static int open_and_send(sd_bus *bus, const struct options *opts, const char *label)
{
	sd_bus_error error = SD_BUS_ERROR_NULL;
	sd_bus_message *call = NULL, *reply = NULL;
	const char *path, *ifname;
	int r, fd = -1, ret = -1;

	r = sd_bus_message_new_method_call(bus, &call, BUS_NAME, ROOT_PATH, MANAGER_IFACE,
					   "OpenTap");
	if (r >= 0)
		r = append_options(call, opts->use_vnet, label);
	if (r < 0) {
		complain("cannot build the OpenTap call", strerror(-r));
		goto out;
	}
	r = sd_bus_call(bus, call, 0, &error, &reply);
	if (r < 0) {
		complain(error_text(&error, r), NULL);
		goto out;
	}
	r = sd_bus_message_read(reply, "os", &path, &ifname);
	if (r >= 0)
		r = sd_bus_message_enter_container(reply, 'a', "h");
	if (r >= 0)
		r = sd_bus_message_read(reply, "h", &fd);
	if (r < 0) {
		complain("cannot read bridged's OpenTap reply", strerror(-r));
		goto out;
	}
	if (r == 0 || fd < 0) {
		complain("bridged sent no tap file descriptor", NULL);
		goto out;
	}
	if (send_fd(opts->channel, fd) < 0) {
		char message[128];

		snprintf(message, sizeof(message), "cannot hand tap %s to qemu", ifname);
		complain(message, strerror(errno));
		goto out;
	}
	ret = 0;
out:
	sd_bus_message_unref(reply);
	sd_bus_message_unref(call);
	sd_bus_error_free(&error);
	return ret;
}

static int connect_bus(const char *address, sd_bus **ret)
{
	sd_bus *bus = NULL;
	char message[512];
	int r;

	r = sd_bus_new(&bus);
	if (r >= 0)
		r = sd_bus_set_address(bus, address);
	if (r >= 0)
		r = sd_bus_set_bus_client(bus, 1);
	if (r >= 0)
		r = sd_bus_negotiate_fds(bus, 1);
	if (r >= 0)
		r = sd_bus_start(bus);
	if (r < 0) {
		snprintf(message, sizeof(message), "cannot connect to %s", address);
		complain(message, strerror(-r));
		sd_bus_unref(bus);
		return -1;
	}
	*ret = bus;
	return 0;
}

int main(int argc, char **argv)
{
	struct options opts = { .channel = -1 };
	const char *address;
	sd_bus *bus = NULL;
	char *label = NULL;
	int r, status = 1;

	r = parse_args(argc, argv, &opts);
	if (r != 0)
		return r > 0 ? 0 : 1;
	/* bridged decides from the caller's identity as the bus sees it. Installed setuid or
	 * setgid, this program would lend that identity to whoever runs it. */
	if (getuid() != geteuid() || getgid() != getegid()) {
		complain("refusing to run setuid or setgid: bridged decides who gets a tap, "
			 "from the caller's own identity", NULL);
		return 1;
	}
	if (check_channel(opts.channel) < 0)
		return 1;

	address = opts.bus_address;
	if (!address)
		address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
	if (!address || !address[0])
		address = SYSTEM_BUS_ADDRESS;
	if (connect_bus(address, &bus) < 0)
		goto out;
	if (opts.bridge && check_bridge(bus, opts.bridge) < 0)
		goto out;
	label = parent_guest_name();
	if (open_and_send(bus, &opts, label) < 0)
		goto out;
	status = 0;
out:
	free(label);
	sd_bus_flush_close_unref(bus);
	return status;
}

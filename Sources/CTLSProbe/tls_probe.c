// The agent's Azure reachability probe: TCP connect plus TLS handshake with a
// deadline. OpenSSL is already in the agent's process through libmosquitto.
#define _GNU_SOURCE
#include "tls_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int remaining(long long deadline) {
    long long left = deadline - now_ms();
    return left > 0 ? (int)left : 0;
}

static int wait_fd(int fd, short events, long long deadline) {
    struct pollfd p = {.fd = fd, .events = events};
    for (;;) {
        int left = remaining(deadline);
        if (left <= 0) return 0;
        int r = poll(&p, 1, left);
        if (r < 0 && errno == EINTR) continue;
        return r;
    }
}

static int connect_with_deadline(const char *host, int port, long long deadline, char *error, size_t error_len) {
    char service[16];
    snprintf(service, sizeof service, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *addresses = NULL;
    int rc = getaddrinfo(host, service, &hints, &addresses);
    if (rc != 0) {
        snprintf(error, error_len, "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    snprintf(error, error_len, "no address for %s", host);
    for (struct addrinfo *a = addresses; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        if (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) > 0) {
            int so_error = 0;
            socklen_t len = sizeof so_error;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
            if (so_error == 0) break;
            snprintf(error, error_len, "cannot connect to %s:%d: %s", host, port, strerror(so_error));
        } else if (errno == EINPROGRESS) {
            snprintf(error, error_len, "connecting to %s:%d timed out", host, port);
        } else {
            snprintf(error, error_len, "cannot connect to %s:%d: %s", host, port, strerror(errno));
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(addresses);
    return fd;
}

int edgefleet_tls_probe(const char *host, int port, int timeout_ms, const char *ca_file, char *error, size_t error_len) {
    long long deadline = now_ms() + timeout_ms;
    int fd = connect_with_deadline(host, port, deadline, error, error_len);
    if (fd < 0) return -1;

    int result = -1;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    if (!ctx) {
        snprintf(error, error_len, "cannot create a TLS context");
        goto done;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    // The system's trust store as a hashed directory (/etc/ssl/certs, or SSL_CERT_DIR): OpenSSL
    // reads only the issuers a handshake needs. SSL_CTX_set_default_verify_paths would also parse
    // the whole bundle file (about 140 certificates, some 600 KB of heap) for every probe's context.
    SSL_CTX_set_default_verify_dir(ctx);
    if (ca_file && SSL_CTX_load_verify_locations(ctx, ca_file, NULL) != 1) {
        snprintf(error, error_len, "cannot load CA file %s", ca_file);
        goto done;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    ssl = SSL_new(ctx);
    if (!ssl) {
        snprintf(error, error_len, "cannot create a TLS session");
        goto done;
    }
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, host);
    SSL_set1_host(ssl, host);
    for (;;) {
        ERR_clear_error();
        int r = SSL_connect(ssl);
        if (r == 1) {
            result = 0;
            break;
        }
        int reason = SSL_get_error(ssl, r);
        if (reason == SSL_ERROR_WANT_READ || reason == SSL_ERROR_WANT_WRITE) {
            if (wait_fd(fd, reason == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline) <= 0) {
                snprintf(error, error_len, "TLS handshake with %s:%d timed out", host, port);
                break;
            }
            continue;
        }
        long verify = SSL_get_verify_result(ssl);
        if (verify != X509_V_OK) {
            snprintf(error, error_len, "TLS handshake with %s:%d failed: %s", host, port, X509_verify_cert_error_string(verify));
        } else {
            unsigned long e = ERR_get_error();
            char text[256] = "connection closed";
            if (e) ERR_error_string_n(e, text, sizeof text);
            snprintf(error, error_len, "TLS handshake with %s:%d failed: %s", host, port, text);
        }
        break;
    }
done:
    if (ssl) SSL_free(ssl);
    if (ctx) SSL_CTX_free(ctx);
    close(fd);
    return result;
}

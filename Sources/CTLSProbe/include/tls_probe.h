#ifndef EDGEFLEET_TLS_PROBE_H
#define EDGEFLEET_TLS_PROBE_H

#include <stddef.h>

/// Connects to host:port over TCP and completes a TLS handshake (SNI = host,
/// certificate chain and host name verified against the system CAs, plus
/// `ca_file` when not NULL), all within `timeout_ms`. Returns 0 when the
/// handshake succeeded; otherwise -1 with a readable reason in `error`.
int edgefleet_tls_probe(const char *host, int port, int timeout_ms, const char *ca_file, char *error, size_t error_len);

#endif

#ifndef EDGEFLEET_CERT_EXPIRY_H
#define EDGEFLEET_CERT_EXPIRY_H
#include <stddef.h>

/// Reads every certificate in a PEM text and returns how many it found; the
/// earliest notAfter (seconds since 1970, UTC) goes to `earliest`. Returns -1
/// with a reason in `error` when the text holds no readable certificate or a
/// malformed one.
int edgefleet_pem_earliest_not_after(const char *pem, size_t length, long long *earliest, char *error, size_t error_len);
#endif

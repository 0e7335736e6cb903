// Certificate expiry for the agent, with the OpenSSL the process already has.
#include "tls_probe.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

int edgefleet_pem_earliest_not_after(const char *pem, size_t length, long long *earliest, char *error, size_t error_len) {
    BIO *bio = BIO_new_mem_buf(pem, (int)length);
    if (!bio) {
        snprintf(error, error_len, "out of memory");
        return -1;
    }
    int count = 0;
    int failed = 0;
    for (;;) {
        ERR_clear_error();
        X509 *certificate = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!certificate) {
            unsigned long e = ERR_peek_last_error();
            // End of input after at least one certificate is the normal end.
            if (ERR_GET_REASON(e) == PEM_R_NO_START_LINE && count > 0) break;
            char text[256] = "no certificate found";
            if (e && ERR_GET_REASON(e) != PEM_R_NO_START_LINE) ERR_error_string_n(e, text, sizeof text);
            snprintf(error, error_len, "%s", text);
            failed = 1;
            break;
        }
        struct tm tm;
        memset(&tm, 0, sizeof tm);
        const ASN1_TIME *not_after = X509_get0_notAfter(certificate);
        if (!not_after || ASN1_TIME_to_tm(not_after, &tm) != 1) {
            snprintf(error, error_len, "certificate %d has an unreadable notAfter", count + 1);
            X509_free(certificate);
            failed = 1;
            break;
        }
        long long seconds = (long long)timegm(&tm);
        if (count == 0 || seconds < *earliest) *earliest = seconds;
        count += 1;
        X509_free(certificate);
    }
    BIO_free(bio);
    return failed ? -1 : count;
}

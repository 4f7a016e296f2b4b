/*
 * localproxy: mbedTLS's own GCM, compiled a second time under other names, as the fallback of
 * the accelerated AES-GCM (cross/aead/lp_aead.c). Built with LP_PORTABLE_AEAD defined, which
 * keeps MBEDTLS_GCM_ALT off in the mbedTLS configuration for this file only, and with the
 * mbedTLS source's library/ directory on the include path.
 */
#define LP_PORTABLE_AEAD 1
#define mbedtls_gcm_context lp_portable_gcm_context
#define mbedtls_gcm_init lp_portable_gcm_init
#define mbedtls_gcm_free lp_portable_gcm_free
#define mbedtls_gcm_setkey lp_portable_gcm_setkey
#define mbedtls_gcm_starts lp_portable_gcm_starts
#define mbedtls_gcm_update_ad lp_portable_gcm_update_ad
#define mbedtls_gcm_update lp_portable_gcm_update
#define mbedtls_gcm_finish lp_portable_gcm_finish
#define mbedtls_gcm_crypt_and_tag lp_portable_gcm_crypt_and_tag
#define mbedtls_gcm_auth_decrypt lp_portable_gcm_auth_decrypt
#define mbedtls_gcm_self_test lp_portable_gcm_self_test

#include "gcm.c"

#undef mbedtls_gcm_context /* the accelerated context's name, for its size constant */
#include "gcm_alt.h"
_Static_assert(sizeof(lp_portable_gcm_context) <= LP_PORTABLE_GCM_SIZE,
               "mbedTLS's GCM context outgrew LP_PORTABLE_GCM_SIZE");
_Static_assert(_Alignof(lp_portable_gcm_context) <= _Alignof(uint64_t),
               "mbedTLS's GCM context needs a stricter alignment");

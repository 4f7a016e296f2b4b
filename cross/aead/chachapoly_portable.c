/*
 * localproxy: mbedTLS's own ChaCha20-Poly1305, compiled a second time under other names, as the
 * fallback of the accelerated AEAD (cross/aead/lp_aead.c). Built with LP_PORTABLE_AEAD defined,
 * which keeps MBEDTLS_CHACHAPOLY_ALT off in cross/mbedtls/mbedtls_config.h for this file only, and with
 * the mbedTLS source's library/ directory on the include path.
 */
#define LP_PORTABLE_AEAD 1
#define mbedtls_chachapoly_context lp_portable_chachapoly_context
#define mbedtls_chachapoly_init lp_portable_chachapoly_init
#define mbedtls_chachapoly_free lp_portable_chachapoly_free
#define mbedtls_chachapoly_setkey lp_portable_chachapoly_setkey
#define mbedtls_chachapoly_starts lp_portable_chachapoly_starts
#define mbedtls_chachapoly_update_aad lp_portable_chachapoly_update_aad
#define mbedtls_chachapoly_update lp_portable_chachapoly_update
#define mbedtls_chachapoly_finish lp_portable_chachapoly_finish
#define mbedtls_chachapoly_encrypt_and_tag lp_portable_chachapoly_encrypt_and_tag
#define mbedtls_chachapoly_auth_decrypt lp_portable_chachapoly_auth_decrypt
#define mbedtls_chachapoly_self_test lp_portable_chachapoly_self_test

#include "chachapoly.c"

#undef mbedtls_chachapoly_context /* the accelerated context's name, for its size constant */
#include "chachapoly_alt.h"
_Static_assert(sizeof(lp_portable_chachapoly_context) <= LP_PORTABLE_CHACHAPOLY_SIZE,
               "mbedTLS's ChaCha20-Poly1305 context outgrew LP_PORTABLE_CHACHAPOLY_SIZE");
_Static_assert(_Alignof(lp_portable_chachapoly_context) <= _Alignof(uint64_t),
               "mbedTLS's ChaCha20-Poly1305 context needs a stricter alignment");

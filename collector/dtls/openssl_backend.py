"""The OpenSSL 3 backend: the system's libssl through a small ctypes binding.

Only the calls a DTLS 1.2 PSK server needs are bound (below, with their C
signatures): a context with the PSK and cookie callbacks, one SSL object per peer
over two memory BIOs (records in, records out), `DTLSv1_listen` for the stateless
cookie exchange, handshake/read/write/shutdown. The library is the distribution's
(Debian's libssl3 here and in the image), so its security fixes arrive with the
system's updates; what this module maintains is the binding, which depends only on
OpenSSL 3's stable public ABI.

Cookies (RFC 6347 §4.2.1): HMAC-SHA256 of the peer's address and port and a
60-second time bucket under a per-process secret; a cookie from the current or the
previous bucket is accepted. `DTLSv1_listen` answers a ClientHello without a valid
cookie with a HelloVerifyRequest and keeps nothing: the SSL object used for it is
freed before `accept` returns.

Memory BIOs do not keep datagram boundaries, so every datagram is written and
processed before the next is written, and the records one call produces (a flight)
leave as one datagram (PSK flights are far below the MTU, set to 1400).
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import os
import struct
import time
from typing import Any

from collector.dtls import backend, records
from collector.dtls.backend import HandshakeFailed, SessionClosed
from collector.psk import PskStore

_P = ctypes.c_void_p
_INT = ctypes.c_int

# ssl.h / bio.h constants (OpenSSL 3.0).
_SSL_OP_NO_QUERY_MTU = 1 << 12
_SSL_OP_COOKIE_EXCHANGE = 1 << 13
_SSL_CTRL_SET_MTU = 17
_SSL_CTRL_SET_MIN_PROTO_VERSION = 123
_SSL_CTRL_SET_MAX_PROTO_VERSION = 124
_DTLS1_2_VERSION = 0xFEFD
_BIO_C_SET_BUF_MEM_EOF_RETURN = 130
_SSL_ERROR_SSL = 1
_SSL_ERROR_WANT_READ = 2
_SSL_ERROR_ZERO_RETURN = 6
_MTU = 1400
_CONTENT_ALERT = 21  # RFC 5246 §6.2.1 ContentType
_CONTENT_HANDSHAKE = 22
_COOKIE_BUCKET = 60  # seconds
_COOKIE_LEN = 20  # 4-byte bucket + 16 bytes of HMAC
_OPENSSL_CIPHERS = b"PSK-AES128-CCM8:PSK-AES128-CCM"
_MAX_PLAINTEXT = 1 << 14
_BUF_LEN = 1 << 16  # the backend's one buffer for plaintexts read and records written

_PSK_CB = ctypes.CFUNCTYPE(
    ctypes.c_uint, _P, ctypes.c_char_p, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_uint
)
_COOKIE_GEN_CB = ctypes.CFUNCTYPE(
    _INT, _P, ctypes.POINTER(ctypes.c_ubyte), ctypes.POINTER(ctypes.c_uint)
)
_COOKIE_VERIFY_CB = ctypes.CFUNCTYPE(_INT, _P, ctypes.POINTER(ctypes.c_ubyte), ctypes.c_uint)


# The calls made for every record, bound a second time without argtypes (as `raw_*`):
# ctypes then converts no argument through a from_param method, which is most of what
# a small call costs. Their arguments must be what C expects without conversion:
# pointers as c_void_p instances or buffers, the int lengths as Python ints.
_RAW = (
    ("ssl", "SSL_read"),  # int SSL_read(SSL *, void *, int)
    ("ssl", "SSL_write"),  # int SSL_write(SSL *, const void *, int)
    ("ssl", "SSL_has_pending"),  # int SSL_has_pending(const SSL *)
    ("crypto", "BIO_write"),  # int BIO_write(BIO *, const void *, int)
    ("crypto", "BIO_read"),  # int BIO_read(BIO *, void *, int)
)


class _Lib:
    """libssl and libcrypto with the prototypes this module calls.

    Loaded as `PyDLL`: the GIL stays held during a call. Every call here is short
    (memory BIOs, no I/O) and a worker is one thread, so giving the GIL up and taking
    it back around each call only added to its cost. The callbacks run inside these
    calls and take the GIL as ctypes callbacks always do (PyGILState_Ensure).
    """

    def __init__(self) -> None:
        ssl = ctypes.PyDLL("libssl.so.3")
        crypto = ctypes.PyDLL("libcrypto.so.3")
        for lib, name, res, args in (
            (ssl, "DTLS_server_method", _P, []),
            (ssl, "SSL_CTX_new", _P, [_P]),
            (ssl, "SSL_CTX_free", None, [_P]),
            (ssl, "SSL_CTX_set_cipher_list", _INT, [_P, ctypes.c_char_p]),
            (ssl, "SSL_CTX_set_options", ctypes.c_uint64, [_P, ctypes.c_uint64]),
            (ssl, "SSL_CTX_ctrl", ctypes.c_long, [_P, _INT, ctypes.c_long, _P]),
            (ssl, "SSL_CTX_set_psk_server_callback", None, [_P, _P]),
            (ssl, "SSL_CTX_set_cookie_generate_cb", None, [_P, _P]),
            (ssl, "SSL_CTX_set_cookie_verify_cb", None, [_P, _P]),
            (ssl, "SSL_new", _P, [_P]),
            (ssl, "SSL_free", None, [_P]),
            (ssl, "SSL_set_bio", None, [_P, _P, _P]),
            (ssl, "SSL_set_accept_state", None, [_P]),
            (ssl, "SSL_ctrl", ctypes.c_long, [_P, _INT, ctypes.c_long, _P]),
            (ssl, "DTLSv1_listen", _INT, [_P, _P]),
            (ssl, "SSL_do_handshake", _INT, [_P]),
            (ssl, "SSL_get_error", _INT, [_P, _INT]),
            (ssl, "SSL_read", _INT, [_P, ctypes.c_char_p, _INT]),
            (ssl, "SSL_write", _INT, [_P, ctypes.c_char_p, _INT]),
            (ssl, "SSL_shutdown", _INT, [_P]),
            (ssl, "SSL_has_pending", _INT, [_P]),
            (ssl, "SSL_get_psk_identity", ctypes.c_char_p, [_P]),
            (ssl, "SSL_get_current_cipher", _P, [_P]),
            (ssl, "SSL_CIPHER_standard_name", ctypes.c_char_p, [_P]),
            (crypto, "BIO_new", _P, [_P]),
            (crypto, "BIO_s_mem", _P, []),
            (crypto, "BIO_write", _INT, [_P, ctypes.c_char_p, _INT]),
            (crypto, "BIO_read", _INT, [_P, ctypes.c_char_p, _INT]),
            (crypto, "BIO_ctrl", ctypes.c_long, [_P, _INT, ctypes.c_long, _P]),
            (crypto, "BIO_ADDR_new", _P, []),
            (crypto, "BIO_ADDR_free", None, [_P]),
            (crypto, "ERR_clear_error", None, []),
        ):
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
            setattr(self, name, fn)
        libs = {"ssl": ssl, "crypto": crypto}
        for which, name in _RAW:
            fn = libs[which][name]  # a new function object: its argtypes stay None
            fn.restype = _INT
            setattr(self, "raw_" + name, fn)


_lib: Any = None  # the loaded _Lib (functions set by name, hence Any)


def available() -> bool:
    """Whether libssl 3 can be loaded here."""
    try:
        _get_lib()
    except OSError:
        return False
    return True


def _get_lib() -> Any:
    global _lib
    if _lib is None:
        _lib = _Lib()
    return _lib


def _carries(datagram: bytes, content_type: int, epoch: bytes) -> bool:
    """Whether a datagram holds a record of `content_type` in `epoch` (2 bytes)."""
    pos = 0
    while pos + 13 <= len(datagram):
        if datagram[pos] == content_type and datagram[pos + 3 : pos + 5] == epoch:
            return True
        pos += 13 + int.from_bytes(datagram[pos + 11 : pos + 13], "big")
    return False


def _carries_finished(datagram: bytes) -> bool:
    """Whether a datagram holds an epoch-1 handshake record (a client's Finished)."""
    return _carries(datagram, _CONTENT_HANDSHAKE, b"\0\1")


def _carries_alert(datagram: bytes) -> bool:
    """Whether a datagram holds a cleartext (epoch-0) alert: the peer gave up itself."""
    return _carries(datagram, _CONTENT_ALERT, b"\0\0")


class OpensslConnection:
    """One peer's SSL object over two memory BIOs, as a `Connection`."""

    def __init__(self, backend_: OpensslBackend) -> None:
        lib: Any = backend_.lib
        self._lib = lib
        self._backend = backend_
        self._buf: Any = backend_.buf  # a c_char array: a slice of it is bytes
        ssl = lib.SSL_new(backend_.ctx)
        if not ssl:
            raise MemoryError("SSL_new")
        self._ssl: int | None = ssl
        self._rbio = lib.BIO_new(lib.BIO_s_mem())
        self._wbio = lib.BIO_new(lib.BIO_s_mem())
        # The same pointers as the `raw_*` calls take them (see _RAW).
        self._ssl_p = ctypes.c_void_p(ssl)
        self._rbio_p = ctypes.c_void_p(self._rbio)
        self._wbio_p = ctypes.c_void_p(self._wbio)
        # An empty memory BIO reads as "retry", not EOF: the datagram will come.
        lib.BIO_ctrl(self._rbio, _BIO_C_SET_BUF_MEM_EOF_RETURN, -1, None)
        lib.BIO_ctrl(self._wbio, _BIO_C_SET_BUF_MEM_EOF_RETURN, -1, None)
        lib.SSL_set_bio(ssl, self._rbio, self._wbio)  # the SSL object owns them now
        lib.SSL_ctrl(ssl, _SSL_CTRL_SET_MTU, _MTU, None)
        lib.SSL_set_accept_state(ssl)
        self.identity: str | None = None
        # Whether the write BIO may hold records not yet handed over by outgoing(): set
        # by every call that can make OpenSSL write, cleared once it is read empty.
        self._unread = True

    def __del__(self) -> None:
        self.free()

    def free(self) -> None:
        ssl, self._ssl = getattr(self, "_ssl", None), None
        if ssl:
            self._lib.SSL_free(ssl)

    def _feed(self, data: bytes) -> None:
        assert self._ssl is not None
        self._lib.raw_BIO_write(self._rbio_p, data, len(data))

    def listen(self, data: bytes) -> int:
        """DTLSv1_listen on one ClientHello: 1 cookie good, 0 answered (HVR) or dropped."""
        assert self._ssl is not None
        self._feed(data)
        lib = self._lib
        addr = lib.BIO_ADDR_new()
        try:
            self._unread = True
            return int(lib.DTLSv1_listen(self._ssl, addr))
        finally:
            lib.BIO_ADDR_free(addr)
            lib.ERR_clear_error()

    def handshake(self, data: bytes) -> bool:
        if self._ssl is None:
            raise HandshakeFailed(backend.PROTOCOL_ERROR, "closed")
        if data:
            self._feed(data)
        lib = self._lib
        self._backend.asked = None
        self._unread = True
        ret = lib.SSL_do_handshake(self._ssl)
        asked, self._backend.asked = self._backend.asked, None
        if asked is not None:
            self.identity = asked[0]
        if ret == 1:
            name = lib.SSL_get_psk_identity(self._ssl)
            if name is not None:
                self.identity = name.decode("utf-8", "replace")
            return True
        err = lib.SSL_get_error(self._ssl, ret)
        lib.ERR_clear_error()
        if err == _SSL_ERROR_WANT_READ:
            if self.identity is not None and _carries_finished(data):
                # DTLS drops a record that fails to decrypt without a word (RFC 6347
                # §4.1.2.7), so a Finished under the wrong key just leaves OpenSSL
                # waiting: the client's last flight came and did not verify.
                raise HandshakeFailed(backend.BAD_KEY)
            return False
        if asked is not None and not asked[1]:
            raise HandshakeFailed(backend.UNKNOWN_IDENTITY)
        if _carries_alert(data):
            # The peer aborted before its Finished (tinydtls does, with internal_error,
            # for a key longer than it holds): nothing was proven about its key, so
            # this is no bad_key, no auth rejection (Mbed TLS' backend agrees).
            raise HandshakeFailed(backend.PROTOCOL_ERROR, "alert from the peer")
        if self.identity is not None:
            raise HandshakeFailed(backend.BAD_KEY)  # the Finished MAC did not verify
        raise HandshakeFailed(backend.PROTOCOL_ERROR)

    def decrypt(self, data: bytes) -> list[bytes]:
        if self._ssl is None:
            raise SessionClosed("closed")
        lib, buf, ssl = self._lib, self._buf, self._ssl_p
        size = len(data)
        lib.raw_BIO_write(self._rbio_p, data, size)
        n = lib.raw_SSL_read(ssl, buf, _MAX_PLAINTEXT)
        if (
            n > 0
            and data[0] == records.CONTENT_APPLICATION_DATA
            and size == records.RECORD_HEADER + (data[11] << 8 | data[12])
        ):
            # The usual datagram: one application record, read. Nothing of it is left,
            # and reading application data makes OpenSSL write nothing (no handshake
            # runs once it is done), so the write BIO is as empty as it was.
            return [buf[:n]]
        self._unread = True  # anything else may draw an answer (a re-sent Finished)
        out: list[bytes] = []
        while True:
            if n > 0:
                out.append(buf[:n])
                # OpenSSL takes the whole datagram from the BIO at its first record, so
                # only the SSL object knows whether more records follow.
                if not lib.raw_SSL_has_pending(ssl):
                    return out
                n = lib.raw_SSL_read(ssl, buf, _MAX_PLAINTEXT)
                continue
            err = lib.SSL_get_error(self._ssl, n)
            lib.ERR_clear_error()
            if err == _SSL_ERROR_WANT_READ:
                return out
            raise SessionClosed("close_notify" if err == _SSL_ERROR_ZERO_RETURN else "alert")

    def encrypt(self, plaintext: bytes) -> bytes:
        if self._ssl is None:
            return b""
        lib, buf = self._lib, self._buf
        lib.raw_SSL_write(self._ssl_p, plaintext, len(plaintext))
        n = lib.raw_BIO_read(self._wbio_p, buf, _BUF_LEN)  # the record, as outgoing()
        self._unread = n >= _BUF_LEN
        return buf[:n] if n > 0 else b""

    def close(self) -> bytes:
        if self._ssl is None:
            return b""
        self._unread = True
        self._lib.SSL_shutdown(self._ssl)
        self._lib.ERR_clear_error()
        out = self.outgoing()
        self.free()
        return out

    def outgoing(self) -> bytes:
        if self._ssl is None:
            return b""
        # A memory BIO hands over everything it holds in one read (up to the buffer).
        if not self._unread:
            return b""
        buf = self._buf
        n = self._lib.raw_BIO_read(self._wbio_p, buf, _BUF_LEN)
        self._unread = n >= _BUF_LEN  # a memory BIO hands over all it holds, up to that
        return buf[:n] if n > 0 else b""

    def cipher(self) -> str | None:
        if self._ssl is None:
            return None
        current = self._lib.SSL_get_current_cipher(self._ssl)
        if not current:
            return None
        name = self._lib.SSL_CIPHER_standard_name(current)
        return None if name is None else name.decode()


class OpensslBackend:
    """Server-side PSK context over one reloadable `PskStore`."""

    def __init__(self, store: PskStore) -> None:
        self.store = store
        lib: Any = _get_lib()
        self.lib = lib
        self.buf = ctypes.create_string_buffer(_BUF_LEN)
        self._secret = os.urandom(32)
        self._peer = b""
        # (identity, found) of the last key lookup: which device a handshake claims.
        self.asked: tuple[str, bool] | None = None
        ctx = lib.SSL_CTX_new(lib.DTLS_server_method())
        if not ctx:
            raise OSError("SSL_CTX_new failed")
        self.ctx = ctx
        if lib.SSL_CTX_set_cipher_list(ctx, _OPENSSL_CIPHERS) != 1:
            raise OSError("OpenSSL offers neither PSK-AES128-CCM8 nor PSK-AES128-CCM")
        lib.SSL_CTX_set_options(ctx, _SSL_OP_NO_QUERY_MTU | _SSL_OP_COOKIE_EXCHANGE)
        lib.SSL_CTX_ctrl(ctx, _SSL_CTRL_SET_MIN_PROTO_VERSION, _DTLS1_2_VERSION, None)
        lib.SSL_CTX_ctrl(ctx, _SSL_CTRL_SET_MAX_PROTO_VERSION, _DTLS1_2_VERSION, None)
        # The callbacks must outlive the context: kept on the instance.
        self._callbacks: tuple[Any, ...] = (
            _PSK_CB(self._psk),
            _COOKIE_GEN_CB(self._cookie_generate),
            _COOKIE_VERIFY_CB(self._cookie_verify),
        )
        psk, gen, verify = self._callbacks
        lib.SSL_CTX_set_psk_server_callback(ctx, ctypes.cast(psk, _P))
        lib.SSL_CTX_set_cookie_generate_cb(ctx, ctypes.cast(gen, _P))
        lib.SSL_CTX_set_cookie_verify_cb(ctx, ctypes.cast(verify, _P))

    def __del__(self) -> None:
        ctx, self.ctx = getattr(self, "ctx", None), None
        if ctx:
            self.lib.SSL_CTX_free(ctx)

    # -- callbacks (run inside OpenSSL calls: never raise) -----------------------------

    def _psk(self, _ssl: int, identity: bytes | None, out: Any, max_len: int) -> int:
        try:
            name = (identity or b"").decode("utf-8", "replace")
            try:
                key = self.store[name]
            except KeyError:
                self.asked = (name, False)
                return 0
            self.asked = (name, True)
            if len(key) > max_len:
                return 0
            ctypes.memmove(out, key, len(key))
            return len(key)
        except Exception:
            return 0

    def _cookie(self, bucket: int) -> bytes:
        stamp = struct.pack("!I", bucket & 0xFFFFFFFF)
        return stamp + hmac.new(self._secret, stamp + self._peer, hashlib.sha256).digest()[:16]

    def _cookie_generate(self, _ssl: int, out: Any, out_len: Any) -> int:
        try:
            cookie = self._cookie(int(time.time()) // _COOKIE_BUCKET)
            ctypes.memmove(out, cookie, len(cookie))
            out_len[0] = len(cookie)
            return 1
        except Exception:
            return 0

    def _cookie_verify(self, _ssl: int, cookie: Any, length: int) -> int:
        try:
            if length != _COOKIE_LEN:
                return 0
            got = ctypes.string_at(cookie, length)
            bucket = struct.unpack("!I", got[:4])[0]
            now = int(time.time()) // _COOKIE_BUCKET
            if bucket not in (now & 0xFFFFFFFF, (now - 1) & 0xFFFFFFFF):
                return 0
            return 1 if hmac.compare_digest(got, self._cookie(bucket)) else 0
        except Exception:
            return 0

    # -- Backend -------------------------------------------------------------------------

    def accept(self, client_hello: bytes, peer: tuple[object, ...]) -> OpensslConnection | bytes:
        self._peer = f"{peer[0]}|{peer[1]}".encode()
        conn = OpensslConnection(self)
        verdict = conn.listen(client_hello)
        if verdict != 1:  # HelloVerifyRequest (or nothing, for junk); nothing kept
            answer = conn.outgoing()
            conn.free()
            return answer
        conn.handshake(b"")  # the ClientHello is already inside: the first flight
        return conn

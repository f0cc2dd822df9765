"""A sans-I/O CoAP (RFC 7252) codec: bytes in, :class:`Message` out, and back.

No sockets, no asyncio, no logging: the caller owns I/O (python-hyper/h11's
shape). The public surface is this module; registries live in :mod:`coap.codes`,
:mod:`coap.options`, :mod:`coap.content_formats` and :mod:`coap.transmission`.
"""

from . import transmission
from ._block import Block
from ._codec import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_OPTIONS, decode, encode
from ._errors import BadOption, BadRequest, CoapError, MessageFormatError, UnsupportedContentFormat
from ._linkformat import Link, link_format
from ._message import Message, Type, path_to_options
from ._shapes import RequestShapes, shapes_for_paths
from .codes import Code, code_str
from .content_formats import ContentFormat
from .options import (
    OPTIONS,
    OptionFormat,
    OptionNumber,
    OptionSpec,
    decode_uint,
    encode_uint,
    is_critical,
    is_no_cache_key,
    is_unsafe,
)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_OPTIONS",
    "OPTIONS",
    "BadOption",
    "BadRequest",
    "Block",
    "CoapError",
    "Code",
    "ContentFormat",
    "Link",
    "Message",
    "MessageFormatError",
    "OptionFormat",
    "OptionNumber",
    "OptionSpec",
    "RequestShapes",
    "Type",
    "UnsupportedContentFormat",
    "code_str",
    "decode",
    "decode_uint",
    "encode",
    "encode_uint",
    "is_critical",
    "is_no_cache_key",
    "is_unsafe",
    "link_format",
    "path_to_options",
    "shapes_for_paths",
    "transmission",
]

"""vis(3)-style encoding of mtree path names, the way bsdtar's mtree reader decodes them.

Every byte of the name outside printable ASCII (0x21-0x7e), and the bytes that are special to
bsdtar's reader or its format detection (space, `#`, `=`, `\\`, `*`, `?`, `[`), is written as a
three-digit octal escape `\\ooo`.

Starlark has no bytes and no ord(); `hash()` of a one-character string is its UTF-16 code unit
(Java's String.hashCode). How Bazel presents a non-ASCII file name depends on the JVM: with
`sun.jnu.encoding=ISO-8859-1` (Bazel's bundled JDK) each character is one byte of the on-disk
name; with a UTF-8 JVM (e.g. Debian's bazel-bootstrap on OpenJDK 21 under a UTF-8 locale) names
are decoded text. A name whose characters are all <= 0xff and form valid UTF-8 as bytes is taken
as bytes; any other name is taken as text and encoded as UTF-8 first.
"""

_SAFE = {c: True for c in "!\"$%&'()+,-./0123456789:;<>@ABCDEFGHIJKLMNOPQRSTUVWXYZ]^_`abcdefghijklmnopqrstuvwxyz{|}~".elems()}

def _octal(code):
    return "\\" + str(code // 64) + str((code // 8) % 8) + str(code % 8)

def _valid_utf8(units):
    n = len(units)
    i = 0
    for _ in range(n):
        if i >= n:
            break
        b = units[i]
        if b < 0x80:
            i += 1
            continue
        if b >= 0xc2 and b <= 0xdf:
            more = 1
        elif b >= 0xe0 and b <= 0xef:
            more = 2
        elif b >= 0xf0 and b <= 0xf4:
            more = 3
        else:
            return False
        for k in range(1, more + 1):
            if i + k >= n or units[i + k] < 0x80 or units[i + k] > 0xbf:
                return False
        i += 1 + more
    return True

def _utf8(units):
    # UTF-16 code units (surrogate pairs combined) -> UTF-8 bytes.
    out = []
    i = 0
    n = len(units)
    for _ in range(n):
        if i >= n:
            break
        cp = units[i]
        i += 1
        if cp >= 0xd800 and cp <= 0xdbff and i < n and units[i] >= 0xdc00 and units[i] <= 0xdfff:
            cp = 0x10000 + ((cp - 0xd800) << 10) + (units[i] - 0xdc00)
            i += 1
        if cp < 0x80:
            out.append(cp)
        elif cp < 0x800:
            out.extend([0xc0 | (cp >> 6), 0x80 | (cp & 0x3f)])
        elif cp < 0x10000:
            out.extend([0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)])
        else:
            out.extend([0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f)])
    return out

def name_bytes(name):
    """The on-disk bytes of a file name as Bazel presents it (see the module doc).

    Args:
        name: a path string.

    Returns:
        a list of ints 0-255.
    """
    units = [hash(c) for c in name.elems()]
    if all([u <= 0xff for u in units]) and _valid_utf8(units):
        return units
    return _utf8(units)

def vis_encode(name):
    """Encode `name` for an mtree path or `content=` value.

    Args:
        name: a path as Bazel presents it.

    Returns:
        the encoded path; `name` itself when nothing needs escaping.
    """
    plain = True
    for c in name.elems():
        if c not in _SAFE:
            plain = False
            break
    if plain:
        return name
    out = []
    for b in name_bytes(name):
        if b > 0x20 and b < 0x7f and b not in (0x23, 0x2a, 0x3d, 0x3f, 0x5b, 0x5c):
            out.append(name_char(b))
        else:
            out.append(_octal(b))
    return "".join(out)

_PRINTABLE = "".join([c for c in " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~".elems()])

def name_char(b):
    """The printable ASCII character with byte value `b` (0x20-0x7e).

    Args:
        b: the byte value.

    Returns:
        a one-character string.
    """
    return _PRINTABLE[b - 0x20]

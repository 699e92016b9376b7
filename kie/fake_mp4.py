"""A tiny valid MP4 (H.264 baseline in an ISO BMFF container), built without ffmpeg.

Every macroblock is I_PCM: raw samples that any H.264 decoder must accept, so no transform or
entropy coder is needed, only correct headers. Big per pixel, but our clips are 64x64 and a
couple of seconds, so a few tens of kilobytes. Used by the fake KIE for video results.
"""

from __future__ import annotations

import colorsys
import struct

_MB = 16  # macroblock side in luma samples


class _Bits:
    """MSB-first bit writer with the Exp-Golomb codes of H.264 headers."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def u(self, width: int, value: int) -> None:
        for shift in range(width - 1, -1, -1):
            self._acc = (self._acc << 1) | ((value >> shift) & 1)
            self._n += 1
            if self._n == 8:
                self.out.append(self._acc)
                self._acc = self._n = 0

    def ue(self, value: int) -> None:
        code = value + 1
        self.u(code.bit_length() - 1, 0)
        self.u(code.bit_length(), code)

    def se(self, value: int) -> None:
        self.ue(2 * value - 1 if value > 0 else -2 * value)

    def align_zero(self) -> None:
        while self._n:
            self.u(1, 0)

    def raw(self, data: bytes) -> None:
        assert self._n == 0, "raw bytes need byte alignment"
        self.out += data

    def trailing(self) -> bytes:
        """rbsp_trailing_bits: a stop bit, then zeros to the byte boundary."""
        self.u(1, 1)
        self.align_zero()
        return bytes(self.out)


def _nal(ref_idc: int, kind: int, rbsp: bytes) -> bytes:
    """A NAL unit with emulation prevention, so no start code hides in the payload."""
    out = bytearray([(ref_idc << 5) | kind])
    zeros = 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def _sps(width_mbs: int, height_mbs: int) -> bytes:
    bits = _Bits()
    bits.u(8, 66)  # profile_idc: Baseline
    bits.u(8, 0xC0)  # constraint_set0 and set1: Constrained Baseline
    bits.u(8, 30)  # level_idc 3.0
    bits.ue(0)  # seq_parameter_set_id
    bits.ue(0)  # log2_max_frame_num_minus4
    bits.ue(2)  # pic_order_cnt_type 2: output order is decoding order
    bits.ue(0)  # max_num_ref_frames: intra only
    bits.u(1, 0)  # gaps_in_frame_num_value_allowed_flag
    bits.ue(width_mbs - 1)
    bits.ue(height_mbs - 1)
    bits.u(1, 1)  # frame_mbs_only_flag
    bits.u(1, 1)  # direct_8x8_inference_flag
    bits.u(1, 0)  # frame_cropping_flag
    bits.u(1, 0)  # vui_parameters_present_flag
    return _nal(3, 7, bits.trailing())


def _pps() -> bytes:
    bits = _Bits()
    bits.ue(0)  # pic_parameter_set_id
    bits.ue(0)  # seq_parameter_set_id
    bits.u(1, 0)  # entropy_coding_mode_flag: CAVLC
    bits.u(1, 0)  # bottom_field_pic_order_in_frame_present_flag
    bits.ue(0)  # num_slice_groups_minus1
    bits.ue(0)  # num_ref_idx_l0_default_active_minus1
    bits.ue(0)  # num_ref_idx_l1_default_active_minus1
    bits.u(1, 0)  # weighted_pred_flag
    bits.u(2, 0)  # weighted_bipred_idc
    bits.se(0)  # pic_init_qp_minus26
    bits.se(0)  # pic_init_qs_minus26
    bits.se(0)  # chroma_qp_index_offset
    bits.u(1, 1)  # deblocking_filter_control_present_flag
    bits.u(1, 0)  # constrained_intra_pred_flag
    bits.u(1, 0)  # redundant_pic_cnt_present_flag
    return _nal(3, 8, bits.trailing())


def _ycbcr(rgb: tuple[float, float, float]) -> tuple[int, int, int]:
    """BT.601 limited range: never 0, which also keeps start codes out of PCM samples."""
    r, g, b = rgb
    y = 16 + 65.481 * r + 128.553 * g + 24.966 * b
    cb = 128 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128 + 112.0 * r - 93.786 * g - 18.214 * b
    return round(y), round(cb), round(cr)


def _idr_slice(frame: int, width_mbs: int, height_mbs: int, hue: float) -> bytes:
    """One IDR picture: a background that shifts hue per frame and a white block moving
    across it, so a player visibly shows motion."""
    bits = _Bits()
    bits.ue(0)  # first_mb_in_slice
    bits.ue(7)  # slice_type: I, and every slice of the picture is I
    bits.ue(0)  # pic_parameter_set_id
    bits.u(4, 0)  # frame_num (log2_max_frame_num = 4); 0 in an IDR picture
    bits.ue(frame % 2)  # idr_pic_id: consecutive IDR pictures must differ
    bits.u(1, 0)  # no_output_of_prior_pics_flag
    bits.u(1, 0)  # long_term_reference_flag
    bits.se(0)  # slice_qp_delta
    bits.ue(1)  # disable_deblocking_filter_idc: off
    background = _ycbcr(colorsys.hsv_to_rgb((hue + frame / 12) % 1.0, 0.6, 0.9))
    block = _ycbcr((1.0, 1.0, 1.0))
    moving = frame % (width_mbs * height_mbs)
    for index in range(width_mbs * height_mbs):
        y, cb, cr = block if index == moving else background
        bits.ue(25)  # mb_type I_PCM
        bits.align_zero()  # pcm_alignment_zero_bit
        bits.raw(bytes([y]) * (_MB * _MB) + bytes([cb]) * 64 + bytes([cr]) * 64)
    return _nal(3, 5, bits.trailing())


def _box(kind: bytes, *parts: bytes) -> bytes:
    payload = b"".join(parts)
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def _full(kind: bytes, version: int, flags: int, *parts: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *parts)


_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def _moov(
    width: int, height: int, samples: list[bytes], sps: bytes, pps: bytes, fps: int, offset: int
) -> bytes:
    timescale, delta = 1000, 1000 // fps
    duration = delta * len(samples)
    avcc = _box(
        b"avcC",
        bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]),
        struct.pack(">H", len(sps)) + sps,
        bytes([1]) + struct.pack(">H", len(pps)) + pps,
    )
    avc1 = _box(
        b"avc1",
        bytes(6) + struct.pack(">H", 1),  # reserved, data_reference_index
        bytes(16) + struct.pack(">HH", width, height),
        struct.pack(">IIIH", 0x480000, 0x480000, 0, 1),  # 72 dpi, reserved, frame_count
        bytes([8]) + b"trt fake".ljust(31, b"\0"),  # compressorname
        struct.pack(">Hh", 0x18, -1),  # depth, pre_defined
        avcc,
    )
    count = len(samples)
    stbl = _box(
        b"stbl",
        _full(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        _full(b"stts", 0, 0, struct.pack(">III", 1, count, delta)),
        _full(b"stss", 0, 0, struct.pack(f">I{count}I", count, *range(1, count + 1))),
        _full(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, count, 1)),
        _full(b"stsz", 0, 0, struct.pack(f">II{count}I", 0, count, *map(len, samples))),
        _full(b"stco", 0, 0, struct.pack(">II", 1, offset)),
    )
    dinf = _box(b"dinf", _full(b"dref", 0, 0, struct.pack(">I", 1), _full(b"url ", 0, 1)))
    minf = _box(b"minf", _full(b"vmhd", 0, 1, bytes(8)), dinf, stbl)
    language = ((ord("u") - 0x60) << 10) | ((ord("n") - 0x60) << 5) | (ord("d") - 0x60)
    mdia = _box(
        b"mdia",
        _full(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, timescale, duration, language, 0)),
        _full(b"hdlr", 0, 0, struct.pack(">I4s12x", 0, b"vide"), b"VideoHandler\0"),
        minf,
    )
    tkhd = _full(
        b"tkhd",
        0,
        3,  # enabled, in movie
        struct.pack(">IIIII8xhhhH", 0, 0, 1, 0, duration, 0, 0, 0, 0),
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mvhd = _full(
        b"mvhd",
        0,
        0,
        struct.pack(">IIIIIH10x", 0, 0, timescale, duration, 0x10000, 0x100),
        _MATRIX,
        bytes(24) + struct.pack(">I", 2),  # pre_defined, next_track_ID
    )
    return _box(b"moov", mvhd, _box(b"trak", tkhd, mdia))


def mp4(
    width: int = 64, height: int = 64, frames: int = 8, fps: int = 4, hue: float = 0.0
) -> bytes:
    """An H.264 MP4 of `frames` pictures; width and height are multiples of 16."""
    if width % _MB or height % _MB or width <= 0 or height <= 0 or frames <= 0 or fps <= 0:
        raise ValueError("width and height must be positive multiples of 16")
    width_mbs, height_mbs = width // _MB, height // _MB
    sps, pps = _sps(width_mbs, height_mbs), _pps()
    nals = [_idr_slice(i, width_mbs, height_mbs, hue) for i in range(frames)]
    samples = [struct.pack(">I", len(nal)) + nal for nal in nals]  # AVCC: length prefixes
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isomiso2avc1mp41")
    # moov goes first (fast start); its size does not depend on the offset it records.
    size = len(_moov(width, height, samples, sps, pps, fps, 0))
    moov = _moov(width, height, samples, sps, pps, fps, len(ftyp) + size + 8)
    return ftyp + moov + _box(b"mdat", *samples)

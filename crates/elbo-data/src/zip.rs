//! ZIP archives as PyTorch and numpy write them: reading (stored and deflated members,
//! ZIP64) and writing (stored members, ZIP64 when a member or the archive passes 4 GiB).
//!
//! `torch.save` files are ZIP archives of stored members and numpy's `.npz` files are ZIP
//! archives of `.npy` members (deflated by `savez_compressed`); that is all this module
//! is for. Every member's CRC-32 is checked when it is read. Written archives are
//! reproducible: every member is dated 1980-01-01 00:00.

use std::io::{Read, Write};

use crate::error::{DataError, Offset, Result};

const LOCAL: u32 = 0x0403_4b50;
const CENTRAL: u32 = 0x0201_4b50;
const END: u32 = 0x0605_4b50;
const END64: u32 = 0x0606_4b50;
const LOCATOR64: u32 = 0x0706_4b50;
const ZIP64_EXTRA: u16 = 0x0001;
/// The largest value a 32-bit field holds before ZIP64 takes over.
const MAX32: u64 = 0xFFFF_FFFF;
/// MS-DOS date of 1980-01-01 (the earliest a ZIP member can have).
const DOS_DATE: u16 = 0x0021;

/// One member of an archive, as its central directory describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's name (its path inside the archive).
    pub name: String,
    /// 0: stored, 8: deflated.
    pub method: u16,
    /// The CRC-32 of the uncompressed bytes.
    pub crc: u32,
    /// Bytes as stored.
    pub compressed: u64,
    /// Bytes uncompressed.
    pub size: u64,
    /// Where its local header starts.
    pub header_offset: u64,
}

/// A ZIP archive held in memory (or mapped), with its central directory read.
pub struct ZipArchive<'a> {
    file: String,
    bytes: &'a [u8],
    members: Vec<Member>,
}

fn bad(file: &str, at: u64, expected: impl Into<String>, found: impl Into<String>) -> DataError {
    DataError::Malformed {
        file: file.to_owned(),
        offset: Offset::File(at),
        expected: expected.into(),
        found: found.into(),
    }
}

/// Little-endian fields at an offset, with the archive's name for errors.
struct Fields<'a> {
    file: &'a str,
    bytes: &'a [u8],
}

impl Fields<'_> {
    fn slice(&self, at: u64, len: u64, what: &str) -> Result<&[u8]> {
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.bytes.len() as u64);
        match end {
            Some(end) => Ok(&self.bytes[at as usize..end as usize]),
            None => Err(bad(
                self.file,
                at,
                format!("{len} bytes of {what}"),
                format!("the end of the file ({} bytes)", self.bytes.len()),
            )),
        }
    }
    fn u16(&self, at: u64) -> Result<u16> {
        let b = self.slice(at, 2, "a 16-bit field")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: u64) -> Result<u32> {
        let b = self.slice(at, 4, "a 32-bit field")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, at: u64) -> Result<u64> {
        let b = self.slice(at, 8, "a 64-bit field")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn signature(&self, at: u64, expected: u32, what: &str) -> Result<()> {
        let found = self.u32(at)?;
        if found != expected {
            return Err(bad(
                self.file,
                at,
                format!("the signature of {what} ({expected:#010x})"),
                format!("{found:#010x}"),
            ));
        }
        Ok(())
    }
}

impl<'a> ZipArchive<'a> {
    /// Reads the central directory of the archive `bytes`; `file` names it in errors.
    pub fn new(file: &str, bytes: &'a [u8]) -> Result<ZipArchive<'a>> {
        let f = Fields { file, bytes };
        let len = bytes.len() as u64;
        // The end record is the last thing in the file, followed by a comment of at most
        // 65535 bytes.
        let lowest = len.saturating_sub(22 + 65_535);
        let end = (lowest..=len.saturating_sub(22))
            .rev()
            .find(|&at| f.u32(at).ok() == Some(END))
            .ok_or_else(|| {
                bad(
                    file,
                    len,
                    "a ZIP archive (its end-of-central-directory record)",
                    "none: not a ZIP file, or one cut short",
                )
            })?;
        let mut entries = u64::from(f.u16(end + 10)?);
        let mut cd_size = u64::from(f.u32(end + 12)?);
        let mut cd_offset = u64::from(f.u32(end + 16)?);
        if entries == 0xFFFF || cd_size == MAX32 || cd_offset == MAX32 {
            let locator = end.checked_sub(20).ok_or_else(|| {
                bad(
                    file,
                    end,
                    "a ZIP64 end-record locator",
                    "the start of the file",
                )
            })?;
            f.signature(locator, LOCATOR64, "the ZIP64 end-record locator")?;
            let end64 = f.u64(locator + 8)?;
            f.signature(end64, END64, "the ZIP64 end-of-central-directory record")?;
            entries = f.u64(end64 + 32)?;
            cd_size = f.u64(end64 + 40)?;
            cd_offset = f.u64(end64 + 48)?;
        }
        f.slice(cd_offset, cd_size, "the central directory")?;
        let mut members = Vec::new();
        let mut at = cd_offset;
        for _ in 0..entries {
            f.signature(at, CENTRAL, "a central directory entry")?;
            let method = f.u16(at + 10)?;
            let crc = f.u32(at + 16)?;
            let mut compressed = u64::from(f.u32(at + 20)?);
            let mut size = u64::from(f.u32(at + 24)?);
            let name_len = u64::from(f.u16(at + 28)?);
            let extra_len = u64::from(f.u16(at + 30)?);
            let comment_len = u64::from(f.u16(at + 32)?);
            let mut header_offset = u64::from(f.u32(at + 42)?);
            let name_bytes = f.slice(at + 46, name_len, "a member name")?;
            let name = String::from_utf8(name_bytes.to_vec())
                .map_err(|_| bad(file, at + 46, "a UTF-8 member name", "other bytes"))?;
            // ZIP64: the 64-bit values of the fields that say 0xFFFFFFFF, in order.
            let extra = f.slice(at + 46 + name_len, extra_len, "the extra fields")?;
            let mut e = 0usize;
            while e + 4 <= extra.len() {
                let id = u16::from_le_bytes([extra[e], extra[e + 1]]);
                let n = usize::from(u16::from_le_bytes([extra[e + 2], extra[e + 3]]));
                if id == ZIP64_EXTRA {
                    let base = at + 46 + name_len + e as u64 + 4;
                    let mut k = 0u64;
                    for field in [&mut size, &mut compressed, &mut header_offset] {
                        if *field == MAX32 && k + 8 <= n as u64 {
                            *field = f.u64(base + k)?;
                            k += 8;
                        }
                    }
                }
                e += 4 + n;
            }
            members.push(Member {
                name,
                method,
                crc,
                compressed,
                size,
                header_offset,
            });
            at += 46 + name_len + extra_len + comment_len;
        }
        Ok(ZipArchive {
            file: file.to_owned(),
            bytes,
            members,
        })
    }

    /// The members, in the central directory's order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The member called `name`, if any.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The stored bytes of a member (compressed if it is), checked to lie in the file.
    fn raw(&self, member: &Member) -> Result<&'a [u8]> {
        let f = Fields {
            file: &self.file,
            bytes: self.bytes,
        };
        let at = member.header_offset;
        f.signature(at, LOCAL, &format!("the local header of {}", member.name))?;
        let data = at + 30 + u64::from(f.u16(at + 26)?) + u64::from(f.u16(at + 28)?);
        f.slice(data, member.compressed, &format!("member {}", member.name))?;
        Ok(&self.bytes[data as usize..(data + member.compressed) as usize])
    }

    /// The uncompressed bytes of `member`, their CRC-32 checked.
    pub fn read(&self, member: &Member) -> Result<Vec<u8>> {
        let raw = self.raw(member)?;
        let where_ = format!("{}:{}", self.file, member.name);
        let bytes = match member.method {
            0 => raw.to_vec(),
            8 => {
                let mut out = Vec::with_capacity(member.size.min(1 << 30) as usize);
                flate2::read::DeflateDecoder::new(raw)
                    .take(member.size.saturating_add(1))
                    .read_to_end(&mut out)
                    .map_err(|e| bad(&where_, 0, "deflated data", e.to_string()))?;
                out
            }
            other => {
                return Err(bad(
                    &where_,
                    member.header_offset,
                    "a stored (0) or deflated (8) member",
                    format!("compression method {other}"),
                ));
            }
        };
        if bytes.len() as u64 != member.size {
            return Err(bad(
                &where_,
                0,
                format!("{} bytes (the directory's size)", member.size),
                format!("{} bytes", bytes.len()),
            ));
        }
        let crc = crc32fast::hash(&bytes);
        if crc != member.crc {
            return Err(bad(
                &where_,
                0,
                format!("CRC-32 {:08x} (the directory's)", member.crc),
                format!("{crc:08x}: the member is damaged"),
            ));
        }
        Ok(bytes)
    }

    /// The uncompressed bytes of the member called `name`.
    pub fn read_named(&self, name: &str) -> Result<Vec<u8>> {
        let member = self.member(name).ok_or_else(|| {
            bad(
                &self.file,
                0,
                format!("a member named {name}"),
                format!(
                    "only {}",
                    self.members
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?;
        self.read(member)
    }
}

/// Writes a ZIP archive of stored members to `out`, one member after the other.
pub struct ZipWriter<W: Write> {
    out: W,
    written: u64,
    members: Vec<Member>,
}

impl<W: Write> ZipWriter<W> {
    /// An archive written to `out`.
    pub fn new(out: W) -> ZipWriter<W> {
        ZipWriter {
            out,
            written: 0,
            members: Vec::new(),
        }
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Adds a member of `size` bytes whose CRC-32 is `crc`, its bytes read from `data`
    /// (exactly `size` of them, or an error).
    pub fn add(
        &mut self,
        name: &str,
        size: u64,
        crc: u32,
        data: &mut dyn Read,
    ) -> std::io::Result<()> {
        let header_offset = self.written;
        let big = size >= MAX32;
        let mut header = Vec::with_capacity(30 + name.len() + 20);
        header.extend_from_slice(&LOCAL.to_le_bytes());
        header.extend_from_slice(&(if big { 45u16 } else { 20 }).to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes()); // flags
        header.extend_from_slice(&0u16.to_le_bytes()); // stored
        header.extend_from_slice(&0u16.to_le_bytes()); // time
        header.extend_from_slice(&DOS_DATE.to_le_bytes());
        header.extend_from_slice(&crc.to_le_bytes());
        let small = if big { MAX32 as u32 } else { size as u32 };
        header.extend_from_slice(&small.to_le_bytes());
        header.extend_from_slice(&small.to_le_bytes());
        header.extend_from_slice(&(name.len() as u16).to_le_bytes());
        header.extend_from_slice(&(if big { 20u16 } else { 0 }).to_le_bytes());
        header.extend_from_slice(name.as_bytes());
        if big {
            header.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
            header.extend_from_slice(&16u16.to_le_bytes());
            header.extend_from_slice(&size.to_le_bytes());
            header.extend_from_slice(&size.to_le_bytes());
        }
        self.put(&header)?;
        let copied = std::io::copy(&mut data.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("member {name}: expected {size} bytes, its source gave {copied}"),
            ));
        }
        self.members.push(Member {
            name: name.to_owned(),
            method: 0,
            crc,
            compressed: size,
            size,
            header_offset,
        });
        Ok(())
    }

    /// Adds a member holding `bytes`.
    pub fn add_bytes(&mut self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let crc = crc32fast::hash(bytes);
        self.add(name, bytes.len() as u64, crc, &mut &bytes[..])
    }

    /// Writes the central directory and the end records; returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        let cd_offset = self.written;
        let members = std::mem::take(&mut self.members);
        for m in &members {
            let mut extra = Vec::new();
            if m.size >= MAX32 {
                extra.extend_from_slice(&m.size.to_le_bytes());
                extra.extend_from_slice(&m.compressed.to_le_bytes());
            }
            if m.header_offset >= MAX32 {
                extra.extend_from_slice(&m.header_offset.to_le_bytes());
            }
            let zip64 = !extra.is_empty();
            let mut e = Vec::with_capacity(46 + m.name.len() + 28);
            e.extend_from_slice(&CENTRAL.to_le_bytes());
            e.extend_from_slice(&(if zip64 { 45u16 } else { 20 }).to_le_bytes()); // made by
            e.extend_from_slice(&(if zip64 { 45u16 } else { 20 }).to_le_bytes()); // needed
            e.extend_from_slice(&0u16.to_le_bytes());
            e.extend_from_slice(&0u16.to_le_bytes());
            e.extend_from_slice(&0u16.to_le_bytes());
            e.extend_from_slice(&DOS_DATE.to_le_bytes());
            e.extend_from_slice(&m.crc.to_le_bytes());
            let sized = if m.size >= MAX32 {
                MAX32 as u32
            } else {
                m.size as u32
            };
            e.extend_from_slice(&sized.to_le_bytes());
            e.extend_from_slice(&sized.to_le_bytes());
            e.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
            let extra_len = if zip64 { extra.len() + 4 } else { 0 };
            e.extend_from_slice(&(extra_len as u16).to_le_bytes());
            e.extend_from_slice(&0u16.to_le_bytes()); // comment
            e.extend_from_slice(&0u16.to_le_bytes()); // disk
            e.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
            e.extend_from_slice(&0u32.to_le_bytes()); // external attributes
            let offset = if m.header_offset >= MAX32 {
                MAX32 as u32
            } else {
                m.header_offset as u32
            };
            e.extend_from_slice(&offset.to_le_bytes());
            e.extend_from_slice(m.name.as_bytes());
            if zip64 {
                e.extend_from_slice(&ZIP64_EXTRA.to_le_bytes());
                e.extend_from_slice(&(extra.len() as u16).to_le_bytes());
                e.extend_from_slice(&extra);
            }
            self.put(&e)?;
        }
        let cd_size = self.written - cd_offset;
        let count = members.len() as u64;
        if count >= 0xFFFF || cd_size >= MAX32 || cd_offset >= MAX32 {
            let end64 = self.written;
            let mut r = Vec::with_capacity(56 + 20);
            r.extend_from_slice(&END64.to_le_bytes());
            r.extend_from_slice(&44u64.to_le_bytes());
            r.extend_from_slice(&45u16.to_le_bytes());
            r.extend_from_slice(&45u16.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&count.to_le_bytes());
            r.extend_from_slice(&count.to_le_bytes());
            r.extend_from_slice(&cd_size.to_le_bytes());
            r.extend_from_slice(&cd_offset.to_le_bytes());
            r.extend_from_slice(&LOCATOR64.to_le_bytes());
            r.extend_from_slice(&0u32.to_le_bytes());
            r.extend_from_slice(&end64.to_le_bytes());
            r.extend_from_slice(&1u32.to_le_bytes());
            self.put(&r)?;
        }
        let mut r = Vec::with_capacity(22);
        r.extend_from_slice(&END.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        let c16 = count.min(0xFFFF) as u16;
        r.extend_from_slice(&c16.to_le_bytes());
        r.extend_from_slice(&c16.to_le_bytes());
        r.extend_from_slice(&(cd_size.min(MAX32) as u32).to_le_bytes());
        r.extend_from_slice(&(cd_offset.min(MAX32) as u32).to_le_bytes());
        r.extend_from_slice(&0u16.to_le_bytes());
        self.put(&r)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_archive_reads_back_member_by_member() {
        let mut w = ZipWriter::new(Vec::new());
        w.add_bytes("a.npy", b"hello").unwrap();
        w.add_bytes("dir/b.bin", &[0u8, 1, 2, 255]).unwrap();
        w.add_bytes("empty", b"").unwrap();
        let bytes = w.finish().unwrap();
        let zip = ZipArchive::new("t.zip", &bytes).unwrap();
        let names: Vec<&str> = zip.members().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a.npy", "dir/b.bin", "empty"]);
        assert_eq!(zip.read_named("a.npy").unwrap(), b"hello");
        assert_eq!(zip.read_named("dir/b.bin").unwrap(), [0, 1, 2, 255]);
        assert!(zip.read_named("empty").unwrap().is_empty());
        let err = zip.read_named("c").unwrap_err().to_string();
        assert!(
            err.contains("a member named c") && err.contains("a.npy"),
            "{err}"
        );
    }

    #[test]
    fn damage_and_truncation_are_refused_with_where() {
        let mut w = ZipWriter::new(Vec::new());
        w.add_bytes("x", b"some bytes to damage").unwrap();
        let good = w.finish().unwrap();
        let mut damaged = good.clone();
        damaged[31] ^= 0xFF; // inside the member's data (30-byte header + 1-byte name)
        let zip = ZipArchive::new("d.zip", &damaged).unwrap();
        let err = zip.read_named("x").unwrap_err().to_string();
        assert!(err.contains("d.zip:x") && err.contains("CRC-32"), "{err}");
        let err = ZipArchive::new("cut.zip", &good[..good.len() - 30])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("cut.zip") && err.contains("end-of-central"),
            "{err}"
        );
        assert!(ZipArchive::new("n.zip", b"not a zip at all, just text").is_err());
    }

    #[test]
    fn deflated_members_are_read() {
        // A deflated member, as numpy's savez_compressed writes them: built by hand.
        let payload = b"abcabcabcabcabcabc deflate me".repeat(20);
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&payload).unwrap();
        let packed = enc.finish().unwrap();
        let mut w = ZipWriter::new(Vec::new());
        w.add_bytes("p", &packed).unwrap();
        let mut bytes = w.finish().unwrap();
        // Make the member "deflated" of the payload's size and CRC: local and central.
        let crc = crc32fast::hash(&payload);
        let cd = bytes.len() - 22 - (46 + 1);
        for (at, method_at, crc_at, usize_at) in [(0usize, 8, 14, 22), (cd, 10, 16, 24)] {
            bytes[at + method_at..at + method_at + 2].copy_from_slice(&8u16.to_le_bytes());
            bytes[at + crc_at..at + crc_at + 4].copy_from_slice(&crc.to_le_bytes());
            bytes[at + usize_at..at + usize_at + 4]
                .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        }
        let zip = ZipArchive::new("c.npz", &bytes).unwrap();
        assert_eq!(zip.read_named("p").unwrap(), payload);
    }

    #[test]
    fn zip64_fields_are_written_and_read_when_offsets_pass_4_gib() {
        // Offsets past 4 GiB without writing 4 GiB: a writer that starts late.
        let mut w = ZipWriter::new(Vec::new());
        w.written = MAX32 + 10;
        w.add_bytes("far", b"beyond").unwrap();
        let tail = w.finish().unwrap();
        // Rebase: an archive whose bytes before the tail are absent is read through a
        // view that puts the tail at its real offset; check the records instead.
        let end = tail.len() - 22;
        assert_eq!(&tail[end..end + 4], &END.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(tail[end + 16..end + 20].try_into().unwrap()),
            u32::MAX
        );
        let locator = end - 20;
        assert_eq!(&tail[locator..locator + 4], &LOCATOR64.to_le_bytes());
        let central = 6 + 30 + 3; // "beyond", header, "far"
        assert_eq!(&tail[central..central + 4], &CENTRAL.to_le_bytes());
        let extra_id = u16::from_le_bytes([tail[central + 49], tail[central + 50]]);
        assert_eq!(extra_id, ZIP64_EXTRA);
        let offset = u64::from_le_bytes(tail[central + 53..central + 61].try_into().unwrap());
        assert_eq!(offset, MAX32 + 10);
    }
}

//! The custom archive's header and table of contents: how integers and strings are encoded, and
//! what the filter needs from the TOC (the version, the integer size, each TABLE DATA entry's
//! dump id and table).

use super::ArchiveError;
use std::collections::HashMap;

pub(super) const fn ver(major: u8, minor: u8) -> u32 {
    ((major as u32) << 16) | ((minor as u32) << 8)
}

#[derive(Debug)]
pub(super) struct Header {
    pub(super) version_text: String,
    pub(super) int_size: usize,
    pub(super) database: String,
    pub(super) server_version: String,
    pub(super) dump_version: String,
    /// dump id -> (schema, table) for TABLE DATA entries
    pub(super) tables: HashMap<i64, (String, String)>,
    /// What `pg_restore --table` can select (tables, views, sequences...), in TOC order.
    pub(super) relations: Vec<super::Relation>,
    /// Every schema the archive creates or puts an object in.
    pub(super) schemas: std::collections::BTreeSet<String>,
    /// Each TOC entry's dump id, where its data-offset field starts, and the field's flag.
    pub(super) offset_fields: Vec<(i64, usize, u8)>,
    pub(super) off_size: usize,
}

pub(super) enum Parse {
    NeedMore,
    Bad(ArchiveError),
}

pub(super) struct Cursor<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) int_size: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], Parse> {
        if self.pos + n > self.data.len() {
            return Err(Parse::NeedMore);
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn byte(&mut self) -> Result<u8, Parse> {
        Ok(self.bytes(1)?[0])
    }

    pub(super) fn int(&mut self) -> Result<i64, Parse> {
        let sign = self.byte()?;
        let raw = self.bytes(self.int_size)?;
        let mut v: i64 = 0;
        for (i, b) in raw.iter().enumerate() {
            v |= (*b as i64) << (8 * i);
        }
        Ok(if sign != 0 { -v } else { v })
    }

    pub(super) fn string(&mut self) -> Result<Option<String>, Parse> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        if len > (1 << 30) {
            return Err(Parse::Bad(ArchiveError::Malformed(format!("string of {len} bytes in the TOC"))));
        }
        Ok(Some(String::from_utf8_lossy(self.bytes(len as usize)?).into_owned()))
    }
}

pub(super) fn parse_header(data: &[u8]) -> Result<(Header, usize), Parse> {
    if data.len() >= 5 && &data[..5] != b"PGDMP" {
        return Err(Parse::Bad(ArchiveError::NotCustomFormat));
    }
    let mut c = Cursor { data, pos: 0, int_size: 4 };
    c.bytes(5)?;
    let (vmaj, vmin, vrev) = (c.byte()?, c.byte()?, c.byte()?);
    let version = ver(vmaj, vmin) | vrev as u32;
    let version_text = format!("{vmaj}.{vmin}.{vrev}");
    if version < ver(1, 12) || version >= ver(1, 17) {
        return Err(Parse::Bad(ArchiveError::UnsupportedVersion(version_text)));
    }
    let int_size = c.byte()? as usize;
    let off_size = c.byte()? as usize;
    if !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
        return Err(Parse::Bad(ArchiveError::Malformed(format!("integer size {int_size}, offset size {off_size}"))));
    }
    c.int_size = int_size;
    let format = c.byte()?;
    if format != 1 {
        return Err(Parse::Bad(ArchiveError::Malformed(format!("archive format {format} is not custom (1)"))));
    }
    if version >= ver(1, 15) {
        c.byte()?; // compression algorithm
    } else {
        c.int()?; // compression level
    }
    for _ in 0..7 {
        c.int()?; // creation time fields
    }
    let database = c.string()?.unwrap_or_default();
    let server_version = c.string()?.unwrap_or_default();
    let dump_version = c.string()?.unwrap_or_default();

    let entries = c.int()?;
    if entries < 0 {
        return Err(Parse::Bad(ArchiveError::Malformed(format!("{entries} TOC entries"))));
    }
    let mut tables = HashMap::new();
    let mut relations = Vec::new();
    let mut schemas = std::collections::BTreeSet::new();
    let mut offset_fields = Vec::new();
    for _ in 0..entries {
        let dump_id = c.int()?;
        let _had_dumper = c.int()?;
        let _table_oid = c.string()?;
        let _oid = c.string()?;
        let tag = c.string()?.unwrap_or_default();
        let desc = c.string()?.unwrap_or_default();
        let _section = c.int()?;
        let _defn = c.string()?;
        let _drop = c.string()?;
        let _copy = c.string()?;
        let namespace = c.string()?.unwrap_or_default();
        let _tablespace = c.string()?;
        if version >= ver(1, 14) {
            let _tableam = c.string()?;
        }
        if version >= ver(1, 16) {
            let _relkind = c.int()?;
        }
        let _owner = c.string()?;
        let _with_oids = c.string()?;
        while c.string()?.is_some() {} // dependencies
        // custom format: data offset (flag byte + off_size bytes)
        let at = c.pos;
        let flag = c.byte()?;
        c.bytes(off_size)?;
        offset_fields.push((dump_id, at, flag));
        match desc.as_str() {
            "SCHEMA" => {
                schemas.insert(tag.clone());
            }
            "TABLE" | "VIEW" | "MATERIALIZED VIEW" | "SEQUENCE" | "FOREIGN TABLE" => relations.push(super::Relation {
                schema: namespace.clone(),
                name: tag.clone(),
                kind: desc.to_lowercase(),
            }),
            _ => {}
        }
        if !namespace.is_empty() {
            schemas.insert(namespace.clone());
        }
        if desc == "TABLE DATA" {
            tables.insert(dump_id, (namespace, tag));
        }
    }
    let header = Header {
        version_text,
        int_size,
        database,
        server_version,
        dump_version,
        tables,
        relations,
        schemas,
        offset_fields,
        off_size,
    };
    Ok((header, c.pos))
}

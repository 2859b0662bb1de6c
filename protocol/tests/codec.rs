//! Wire-level tests: exact bytes, round trips of arbitrary frames, and hostile input.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use streamgate_protocol::*;
use tokio_util::codec::{Decoder, Encoder};

fn encode(frame: Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    FrameCodec::new().encode(frame, &mut buf).unwrap();
    buf
}

fn decode_all(mut buf: BytesMut) -> Result<Vec<Frame>, ProtocolError> {
    let mut codec = FrameCodec::new();
    let mut out = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf)? {
        out.push(frame);
    }
    Ok(out)
}

#[test]
fn wire_bytes_are_pinned() {
    assert_eq!(&encode(Frame::Cancel)[..], &[0, 0, 0, 1, 0x40]);
    assert_eq!(
        &encode(Frame::End { total_bytes: 258 })[..],
        &[0, 0, 0, 9, 0x31, 0, 0, 0, 0, 0, 0, 1, 2]
    );
    assert_eq!(
        &encode(Frame::Data(Bytes::from_static(b"ab")))[..],
        &[0, 0, 0, 3, 0x30, b'a', b'b']
    );
    let err = encode(Frame::Error(JobError::new(ErrorCode::NotFound, "gone")));
    assert_eq!(&err[..5], &[0, 0, 0, 38, 0x3f]);
    assert_eq!(&err[5..], br#"{"code":"not_found","message":"gone"}"#);
}

#[test]
fn oversized_length_is_refused_before_allocating() {
    // Claims 4 GiB; the decoder must fail on the header alone.
    let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x30][..]);
    let err = FrameCodec::new().decode(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::FrameTooLarge {
                len: 0xffff_ffff,
                max: MAX_FRAME_LEN
            }
        ),
        "{err:?}"
    );
    assert!(
        buf.capacity() < 1024 * 1024,
        "buffer grew to {}",
        buf.capacity()
    );

    let mut just_over = BytesMut::new();
    just_over.put_u32(MAX_FRAME_LEN as u32 + 1);
    assert!(matches!(
        FrameCodec::new().decode(&mut just_over),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
}

#[test]
fn encoder_refuses_oversized_frames() {
    let mut buf = BytesMut::new();
    let big = Frame::Data(Bytes::from(vec![0u8; MAX_FRAME_LEN]));
    let err = FrameCodec::new().encode(big, &mut buf).unwrap_err();
    assert!(matches!(err, ProtocolError::FrameTooLarge { .. }));
    assert!(
        buf.is_empty(),
        "a refused frame leaves nothing in the buffer"
    );
    // The largest legal data frame passes.
    let max = Frame::Data(Bytes::from(vec![0u8; MAX_FRAME_LEN - 1]));
    FrameCodec::new().encode(max, &mut buf).unwrap();
}

#[test]
fn truncated_unknown_and_malformed_frames_are_errors() {
    let whole = encode(Frame::End { total_bytes: 1 });
    for cut in 1..whole.len() {
        let err = decode_all(BytesMut::from(&whole[..cut])).unwrap_err();
        assert!(
            matches!(err, ProtocolError::Truncated),
            "cut {cut}: {err:?}"
        );
    }
    let err = decode_all(BytesMut::from(&[0, 0, 0, 1, 0x7e][..])).unwrap_err();
    assert!(matches!(err, ProtocolError::UnknownType(0x7e)));
    let err = decode_all(BytesMut::from(&[0, 0, 0, 0][..])).unwrap_err();
    assert!(matches!(err, ProtocolError::Empty));
    let err = decode_all(BytesMut::from(&[0, 0, 0, 3, 0x31, 1, 2][..])).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { kind: 0x31, .. }));
    let err = decode_all(BytesMut::from(&[0, 0, 0, 3, 0x10, b'{', b'}'][..])).unwrap_err();
    assert!(
        matches!(err, ProtocolError::Malformed { kind: 0x10, .. }),
        "{err:?}"
    );
    let err = decode_all(BytesMut::from(&[0, 0, 0, 2, 0x40, 0][..])).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { kind: 0x40, .. }));
    let err = decode_all(BytesMut::from(&[0, 0, 0, 2, 0x41, 0][..])).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { kind: 0x41, .. }));
    // A facts frame without its one required field.
    let err = decode_all(BytesMut::from(&[0, 0, 0, 3, 0x22, b'{', b'}'][..])).unwrap_err();
    assert!(matches!(err, ProtocolError::Malformed { kind: 0x22, .. }));
}

#[test]
fn review_frames_are_pinned() {
    assert_eq!(&encode(Frame::Proceed)[..], &[0, 0, 0, 1, 0x41]);
    let facts = encode(Frame::Facts(MediaFacts {
        extractor: Some("Generic".into()),
        duration: Some(10.5),
        is_live: true,
        formats: vec![FormatInfo {
            id: "0".into(),
            ext: Some("mp4".into()),
            resolution: None,
            vcodec: None,
            acodec: None,
            size: Some(2048),
            protocol: None,
        }],
        ..MediaFacts::default()
    }));
    let json = br#"{"extractor":"Generic","duration":10.5,"is_live":true,"formats":[{"id":"0","ext":"mp4","resolution":null,"vcodec":null,"acodec":null,"size":2048,"protocol":null}]}"#;
    assert_eq!(&facts[..5], &[0, 0, 0, json.len() as u8 + 1, 0x22]);
    assert_eq!(&facts[5..], json);
    // Unknown to yt-dlp: absent fields are none, `is_live` false.
    let mut minimal = BytesMut::from(&[0, 0, 0, 15, 0x22][..]);
    minimal.extend_from_slice(br#"{"formats":[]}"#);
    assert_eq!(
        decode_all(minimal).unwrap(),
        vec![Frame::Facts(MediaFacts::default())]
    );
    // `review` is sent only when set: a job without it is byte-identical to version 2's.
    let job = StreamJob {
        url: "u".into(),
        format: "b".into(),
        ..StreamJob::default()
    };
    let plain = encode(Frame::Stream(job.clone()));
    assert!(!String::from_utf8_lossy(&plain[5..]).contains("review"));
    let reviewed = encode(Frame::Stream(StreamJob {
        review: true,
        ..job
    }));
    assert!(String::from_utf8_lossy(&reviewed[5..]).ends_with(r#""review":true}"#));
}

#[tokio::test]
async fn handshake_over_a_real_socket_pair() {
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let server = tokio::spawn(async move {
        let mut conn = connection(b);
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            sidecar: "0.1.0".into(),
            yt_dlp: "2026.10.26".into(),
            egress: EgressMode::Proxy,
        };
        server_handshake(&mut conn, welcome).await.unwrap()
    });
    let mut conn = connection(a);
    let welcome = client_handshake(&mut conn, "test").await.unwrap();
    assert_eq!(welcome.yt_dlp, "2026.10.26");
    assert_eq!(server.await.unwrap().client, "test");
}

#[tokio::test]
async fn handshake_refuses_another_version() {
    use futures::{SinkExt, StreamExt};
    let (a, b) = tokio::net::UnixStream::pair().unwrap();
    let server = tokio::spawn(async move {
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            sidecar: String::new(),
            yt_dlp: String::new(),
            egress: EgressMode::Netns,
        };
        server_handshake(&mut connection(b), welcome).await
    });
    let mut conn = connection(a);
    conn.send(Frame::Hello(Hello {
        version: 99,
        client: String::new(),
    }))
    .await
    .unwrap();
    let reply = conn.next().await.unwrap().unwrap();
    assert!(matches!(
        reply,
        Frame::Error(JobError {
            code: ErrorCode::Protocol,
            ..
        })
    ));
    assert!(matches!(
        server.await.unwrap(),
        Err(ProtocolError::Version { peer: 99, .. })
    ));
}

fn opt_string() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(any::<String>())
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let code = proptest::sample::select(ErrorCode::ALL.to_vec());
    let format = (
        any::<String>(),
        opt_string(),
        opt_string(),
        opt_string(),
        opt_string(),
        proptest::option::of(any::<u64>()),
        opt_string(),
    )
        .prop_map(
            |(id, ext, resolution, vcodec, acodec, size, protocol)| FormatInfo {
                id,
                ext,
                resolution,
                vcodec,
                acodec,
                size,
                protocol,
            },
        )
        .boxed();
    prop_oneof![
        (any::<u16>(), any::<String>())
            .prop_map(|(version, client)| Frame::Hello(Hello { version, client })),
        (any::<u16>(), any::<String>(), any::<String>()).prop_map(|(version, sidecar, yt_dlp)| {
            Frame::Welcome(Welcome {
                version,
                sidecar,
                yt_dlp,
                egress: EgressMode::Netns,
            })
        }),
        (any::<String>(), any::<String>(), opt_string(), opt_string()).prop_map(
            |(url, format, tenant, request_id)| Frame::Stream(StreamJob {
                review: request_id.is_some(),
                url,
                format,
                tenant,
                request_id,
                egress: EgressRules::default(),
                max_filesize: None,
                range: Some(ByteRange::From {
                    start: 5,
                    end: None
                }),
                head: false,
            })
        ),
        (any::<String>(), opt_string(), opt_string(), opt_string()).prop_map(
            |(url, format, tenant, request_id)| Frame::Resolve(ResolveJob {
                url,
                format,
                tenant,
                request_id,
                egress: EgressRules {
                    allow_cidrs: vec!["10.0.0.0/8".into()],
                    ports: vec![8080],
                    ..EgressRules::default()
                },
            })
        ),
        (
            any::<String>(),
            any::<String>(),
            any::<String>(),
            proptest::option::of(any::<u64>()),
            opt_string()
        )
            .prop_map(
                |(filename, ext, mime, size, title)| Frame::Metadata(Metadata {
                    filename,
                    ext,
                    mime,
                    size,
                    title,
                    ..Default::default()
                })
            ),
        (
            opt_string(),
            proptest::option::of(-1e9f64..1e9),
            opt_string(),
            proptest::collection::vec(format.clone(), 0..8)
        )
            .prop_map(
                |(title, duration, thumbnail, formats)| Frame::Info(MediaInfo {
                    title,
                    duration,
                    thumbnail,
                    formats
                })
            ),
        (
            (opt_string(), opt_string(), opt_string()),
            proptest::option::of(0f64..1e9),
            any::<bool>(),
            proptest::collection::vec(format, 0..4)
        )
            .prop_map(
                |((extractor, title, uploader), duration, is_live, formats)| {
                    Frame::Facts(MediaFacts {
                        extractor,
                        title,
                        uploader,
                        duration,
                        is_live,
                        formats,
                    })
                }
            ),
        proptest::collection::vec(any::<u8>(), 0..4096).prop_map(|v| Frame::Data(Bytes::from(v))),
        any::<u64>().prop_map(|total_bytes| Frame::End { total_bytes }),
        (code, any::<String>())
            .prop_map(|(code, message)| Frame::Error(JobError::new(code, message))),
        Just(Frame::Cancel),
        Just(Frame::Proceed),
    ]
}

proptest! {
    #[test]
    fn any_sequence_round_trips(frames in proptest::collection::vec(arb_frame(), 0..16)) {
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::new();
        for f in &frames {
            codec.encode(f.clone(), &mut buf).unwrap();
        }
        prop_assert_eq!(decode_all(buf).unwrap(), frames);
    }

    #[test]
    fn split_anywhere_still_decodes(frame in arb_frame(), at in any::<prop::sample::Index>()) {
        let whole = encode(frame.clone());
        let at = at.index(whole.len());
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&whole[..at]);
        let first = codec.decode(&mut buf).unwrap();
        prop_assert!(first.is_none() || at == whole.len());
        buf.extend_from_slice(&whole[at..]);
        prop_assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_all(BytesMut::from(&bytes[..]));
    }
}

/// Merges runs of data frames: the byte stream a relay would forward.
fn coalesce(frames: Vec<Frame>) -> Vec<Frame> {
    let mut out: Vec<Frame> = Vec::new();
    for frame in frames {
        match (out.last_mut(), frame) {
            (_, Frame::Data(b)) if b.is_empty() => {}
            (Some(Frame::Data(prev)), Frame::Data(b)) => {
                let mut joined = BytesMut::from(&prev[..]);
                joined.extend_from_slice(&b);
                *prev = joined.freeze();
            }
            (_, other) => out.push(other),
        }
    }
    out
}

#[test]
fn streaming_mode_never_buffers_a_whole_data_frame() {
    let mut wire = encode(Frame::Data(Bytes::from(vec![7u8; 200_000])));
    wire.extend_from_slice(&encode(Frame::End {
        total_bytes: 200_000,
    }));
    let mut codec = FrameCodec::streaming_data(64 * 1024);
    let mut buf = BytesMut::new();
    let mut pieces = Vec::new();
    for part in wire.chunks(10_000) {
        buf.extend_from_slice(part);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            pieces.push(frame);
        }
        assert!(buf.len() <= 10_000 + 5, "buffered {} bytes", buf.len());
    }
    assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    assert!(
        pieces
            .iter()
            .all(|f| !matches!(f, Frame::Data(b) if b.len() > 64 * 1024))
    );
    assert_eq!(
        coalesce(pieces),
        vec![
            Frame::Data(Bytes::from(vec![7u8; 200_000])),
            Frame::End {
                total_bytes: 200_000
            }
        ]
    );
    // A stream cut inside a data payload is truncated, as in whole-frame mode.
    let mut codec = FrameCodec::streaming_data(1024);
    let mut cut = BytesMut::from(&wire[..5000]);
    while codec.decode(&mut cut).unwrap().is_some() {}
    assert!(matches!(
        codec.decode_eof(&mut cut),
        Err(ProtocolError::Truncated)
    ));
}

proptest! {
    #[test]
    fn streaming_mode_yields_the_same_stream(
        frames in proptest::collection::vec(arb_frame(), 0..12),
        chunk in 1usize..5000,
        feed in 1usize..7000,
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            FrameCodec::new().encode(f.clone(), &mut wire).unwrap();
        }
        let mut codec = FrameCodec::streaming_data(chunk);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in wire.chunks(feed) {
            buf.extend_from_slice(part);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                prop_assert!(!matches!(&frame, Frame::Data(b) if b.len() > chunk));
                got.push(frame);
            }
        }
        while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
            got.push(frame);
        }
        prop_assert_eq!(coalesce(got), coalesce(frames));
    }
}

#[test]
fn byte_ranges_resolve_against_the_size() {
    let from = |start, end| ByteRange::From { start, end };
    assert_eq!(from(0, None).resolve(10), Some((0, 9)));
    assert_eq!(from(2, Some(5)).resolve(10), Some((2, 5)));
    assert_eq!(from(2, Some(50)).resolve(10), Some((2, 9)));
    assert_eq!(from(10, None).resolve(10), None);
    assert_eq!(from(0, None).resolve(0), None);
    assert_eq!(ByteRange::Suffix { len: 3 }.resolve(10), Some((7, 9)));
    assert_eq!(ByteRange::Suffix { len: 30 }.resolve(10), Some((0, 9)));
    assert_eq!(ByteRange::Suffix { len: 0 }.resolve(10), None);
    let wire = serde_json::to_string(&ByteRange::Suffix { len: 5 }).unwrap();
    assert_eq!(wire, r#"{"suffix":{"len":5}}"#);
}

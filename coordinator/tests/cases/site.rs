//! What the web site reads, on both backends: ranked lists by total
//! credit and by RAC as of now, pages, name searches that rank among
//! everyone, and LIKE's wildcards taken literally.

use super::store::{attach, backends};
use cobble_coordinator::credit;
use cobble_coordinator::store::site::{Board, ListQuery, Ranking};

const DAY_MS: i64 = 24 * 3_600_000;

#[tokio::test]
async fn ranked_lists_agree_with_credit_and_rac_as_of_now() {
    for backend in backends().await {
        let store = &backend.store;
        let now = cobble_core::now_ms();
        // (name, total credit, RAC, when that RAC was computed)
        let accounts = [
            ("ada", 500.0, 100.0, now - 7 * DAY_MS), // RAC 50 now
            ("grace", 300.0, 60.0, now),
            ("linus_", 900.0, 40.0, now),
            ("100%", 100.0, 0.0, 0),
        ];
        for (name, total, rac, at) in accounts {
            attach(store, name).await;
            sqlx::query(
                "UPDATE accounts SET total_credit = $1, rac = $2, rac_time_ms = $3, rac_key = $4,
                        public_name = 1
                 WHERE name = $5",
            )
            .bind(total)
            .bind(rac)
            .bind(at)
            .bind(credit::rac_order_key(rac, at))
            .bind(name)
            .execute(store.db.pool())
            .await
            .expect("credit");
        }
        // One more, who did not allow their name: anonymous, last, and
        // not found by a search for the name.
        let hidden = store
            .register_host(&cobble_proto::v1::RegisterHostRequest {
                account: "hidden-hannah".into(),
                host_name: "hannahs-laptop".into(),
                public_name: false,
                ..Default::default()
            })
            .await
            .expect("attach");
        let list = |ranking, page, per_page, search: &str| ListQuery {
            board: Board::Users,
            ranking,
            page,
            per_page,
            search: search.to_string(),
        };
        let names = |page: &cobble_coordinator::store::site::RankedPage| {
            page.entries
                .iter()
                .map(|e| (e.rank, e.name.clone()))
                .collect::<Vec<_>>()
        };
        let by_credit = store
            .ranked(&list(Ranking::Credit, 1, 10, ""))
            .await
            .expect("list");
        let anonymous = format!("anonymous-{}", hidden.account_id);
        assert_eq!(by_credit.total, 5);
        assert_eq!(
            names(&by_credit),
            [
                (1, "linus_"),
                (2, "ada"),
                (3, "grace"),
                (4, "100%"),
                (5, &anonymous)
            ]
            .map(|(r, n)| (r, n.to_string()))
        );
        let guessed = store
            .ranked(&list(Ranking::Credit, 1, 10, "hannah"))
            .await
            .expect("search");
        assert_eq!(
            guessed.total, 0,
            "a private name is not found by guessing it"
        );
        let hosts = store
            .ranked(&ListQuery {
                board: Board::Hosts,
                ranking: Ranking::Credit,
                page: 1,
                per_page: 10,
                search: String::new(),
            })
            .await
            .expect("hosts");
        assert!(
            hosts
                .entries
                .iter()
                .all(|h| !h.name.contains("hannah") && !h.detail.contains("hannah")),
            "{hosts:?}"
        );
        let board = store.leaderboard("users", 10).await.expect("leaderboard");
        let cli: Vec<_> = board
            .entries
            .iter()
            .map(|e| (e.rank as u64, e.name.clone()))
            .collect();
        assert_eq!(
            names(&by_credit),
            cli,
            "the site and `cobble leaderboard` agree"
        );

        // ada's 100 a week ago is 50 now: below grace's 60, above linus's 40.
        let by_rac = store
            .ranked(&list(Ranking::Rac, 1, 10, ""))
            .await
            .expect("list");
        assert_eq!(
            names(&by_rac),
            [
                (1, "grace"),
                (2, "ada"),
                (3, "linus_"),
                (4, "100%"),
                (5, &anonymous)
            ]
            .map(|(r, n)| (r, n.to_string()))
        );
        assert!((by_rac.entries[1].recent_average_credit - 50.0).abs() < 0.01);

        // Pages, and a page past the end.
        let second = store
            .ranked(&list(Ranking::Credit, 2, 3, ""))
            .await
            .expect("list");
        assert_eq!(
            names(&second),
            vec![(4, "100%".to_string()), (5, anonymous.clone())]
        );
        let beyond = store
            .ranked(&list(Ranking::Credit, 9, 3, ""))
            .await
            .expect("list");
        assert!(beyond.entries.is_empty());

        // A search ranks among everyone, case aside; `_` and `%` are
        // literal characters, not wildcards.
        let found = store
            .ranked(&list(Ranking::Rac, 1, 10, "ADA"))
            .await
            .expect("search");
        assert_eq!(names(&found), vec![(2, "ada".to_string())]);
        let underscore = store
            .ranked(&list(Ranking::Credit, 1, 10, "_"))
            .await
            .expect("search");
        assert_eq!(names(&underscore), vec![(1, "linus_".to_string())]);
        let percent = store
            .ranked(&list(Ranking::Credit, 1, 10, "%"))
            .await
            .expect("search");
        assert_eq!(names(&percent), vec![(4, "100%".to_string())]);

        // The worst values are refused, not run.
        for bad in [
            list(Ranking::Credit, 0, 10, ""),
            list(Ranking::Credit, 1, 0, ""),
            list(Ranking::Credit, 1, 101, ""),
            list(Ranking::Credit, u32::MAX, 100, ""),
            list(Ranking::Credit, 1, 10, &"x".repeat(10_000)),
        ] {
            let refused = store.ranked(&bad).await;
            assert!(
                matches!(refused, Err(cobble_coordinator::Error::InvalidArgument(_))),
                "{bad:?}: {refused:?}"
            );
        }

        // A user's page: rank, daily totals (two stored days and today's
        // live one), hosts; a team's members; unknown ids.
        let ada = by_credit.entries[1].id;
        let today = cobble_core::now_ms().div_euclid(DAY_MS);
        for (day, total) in [(today - 3, 120.0), (today - 1, 480.0), (today, 1.0)] {
            sqlx::query(
                "INSERT INTO credit_days (board, id, day, total_credit) VALUES ('users', $1, $2, $3)",
            )
            .bind(ada)
            .bind(day)
            .bind(total)
            .execute(store.db.pool())
            .await
            .expect("history");
        }
        let standings = store.standings(Board::Users).await.expect("standings");
        let profile = store
            .profile(Board::Users, ada, &standings)
            .await
            .expect("profile")
            .expect("ada");
        assert_eq!((profile.name.as_str(), profile.rank), ("ada", 2));
        let days: Vec<(i64, f64)> = profile
            .history
            .iter()
            .map(|p| (p.day, p.total_credit))
            .collect();
        assert_eq!(
            days,
            vec![(today - 3, 120.0), (today - 1, 480.0), (today, 500.0)],
            "today's point is the live total"
        );
        assert_eq!(profile.members.len(), 1, "ada's one host");
        assert!(
            store
                .profile(
                    Board::Hosts,
                    999_999,
                    &store.standings(Board::Hosts).await.expect("standings")
                )
                .await
                .expect("none")
                .is_none()
        );
        // The leader's daily record: today's total for whoever was
        // credited since the cut-off, once per day, updated in place.
        store.record_credit_days(1).await.expect("record");
        store.record_credit_days(1).await.expect("again");
        let recorded: Vec<(i64, f64)> = sqlx::query_as(
            "SELECT id, total_credit FROM credit_days WHERE board = 'users' AND day = $1 ORDER BY id",
        )
        .bind(today)
        .fetch_all(store.db.pool())
        .await
        .expect("recorded");
        assert_eq!(
            recorded.len(),
            3,
            "the three credited in the window: {recorded:?}"
        );
        assert!(
            recorded
                .iter()
                .any(|(id, total)| *id == ada && *total == 500.0)
        );

        let counters = store.project_counters().await.expect("counters");
        assert_eq!(counters.users, 5, "totals count everyone");
        assert!((counters.total_credit - 1800.0).abs() < 1e-6);
        assert!(
            (counters.recent_average_credit - 150.0).abs() < 0.1,
            "{counters:?}"
        );
        backend.cleanup().await;
    }
}

/// The statistics export on both backends: BOINC's files and element
/// names, totals that equal the database's, names only with consent, no
/// host names at all, text escaped.
#[tokio::test]
async fn the_stats_export_counts_everyone_and_names_only_who_allowed_it() {
    use cobble_proto::v1::RegisterHostRequest;
    use std::io::Read;
    for backend in backends().await {
        let store = &backend.store;
        let register = |account: &str, team: &str, public_name: bool| RegisterHostRequest {
            account: account.into(),
            team: team.into(),
            host_name: format!("{account}s-laptop"),
            os: "linux".into(),
            cpus: 8,
            public_name,
            ..Default::default()
        };
        // The team's first member keeps their name private: the team's
        // founder is exported anonymous.
        store
            .register_host(&register("private-pat", "pioneers", false))
            .await
            .expect("attach");
        store
            .register_host(&register("ada <&>", "pioneers", true))
            .await
            .expect("attach");
        store
            .register_host(&register("grace", "", true))
            .await
            .expect("attach");
        sqlx::query("UPDATE accounts SET total_credit = id * 10.0, rac = 5.0, rac_time_ms = $1")
            .bind(cobble_core::now_ms())
            .execute(store.db.pool())
            .await
            .expect("credit");
        let dir = tempfile::tempdir().expect("temp dir");
        let summary = store.export_stats(dir.path()).await.expect("export");
        assert_eq!((summary.users, summary.teams, summary.hosts), (3, 1, 3));
        let total: f64 = sqlx::query_scalar("SELECT SUM(total_credit) FROM accounts")
            .fetch_one(store.db.pool())
            .await
            .expect("sum");
        assert!((summary.total_credit - total).abs() < 1e-9);

        let tables = std::fs::read_to_string(dir.path().join("tables.xml")).expect("tables");
        for element in [
            "<nusers_total>3</nusers_total>",
            "<nteams_total>1</nteams_total>",
            "<nhosts_total>3</nhosts_total>",
            &format!("<total_credit>{total:.6}</total_credit>"),
        ] {
            assert!(tables.contains(element), "{element} in {tables}");
        }
        let gunzip = |name: &str| {
            let bytes = std::fs::read(dir.path().join(name)).expect("file");
            let mut text = String::new();
            flate2::read::GzDecoder::new(bytes.as_slice())
                .read_to_string(&mut text)
                .expect("gunzips");
            text
        };
        let users = gunzip("user.gz");
        assert_eq!(users.matches("<user>").count(), 3);
        assert!(users.starts_with("<users>") && users.trim_end().ends_with("</users>"));
        assert!(users.contains("<name>ada &lt;&amp;&gt;</name>"), "{users}");
        assert!(users.contains("<name>grace</name>"));
        assert!(
            !users.contains("private-pat"),
            "a private name left: {users}"
        );
        // A cpid only for those who allowed their name: two of three.
        let cpids = users
            .matches("<cpid>")
            .zip(users.split("<cpid>").skip(1))
            .filter(|(_, rest)| !rest.starts_with("</cpid>"))
            .count();
        assert_eq!(cpids, 2, "{users}");
        for field in [
            "<expavg_credit>",
            "<expavg_time>",
            "<create_time>",
            "<teamid>",
        ] {
            assert_eq!(users.matches(field).count(), 3, "{field}");
        }
        let teams = gunzip("team.gz");
        assert!(teams.contains("<name>pioneers</name>"));
        assert!(teams.contains("<founder_name>anonymous-"), "{teams}");
        assert!(!teams.contains("private-pat"));
        let hosts = gunzip("host.gz");
        assert_eq!(hosts.matches("<host>").count(), 3);
        assert!(
            !hosts.contains("laptop"),
            "host names are never exported: {hosts}"
        );
        assert!(
            hosts.contains("<os_name>linux</os_name>") && hosts.contains("<p_ncpus>8</p_ncpus>")
        );

        // A second export replaces the files whole.
        store.export_stats(dir.path()).await.expect("again");
        assert_eq!(gunzip("user.gz").matches("<user>").count(), 3);
        let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
        assert_eq!(leftovers, 4, "no temporary files left");
        backend.cleanup().await;
    }
}

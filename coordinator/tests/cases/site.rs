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
        let profile = store
            .profile(Board::Users, ada)
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
                .profile(Board::Hosts, 999_999)
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

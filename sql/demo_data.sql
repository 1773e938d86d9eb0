-- The reference scenario: three users, then updates that leave exactly six audit rows
-- (user_id, field: old -> new):
--   1 name  Иван Иванов -> Иван Сидоров       1 role  user -> admin
--   2 email petr@example.com -> petr_p@example.com
--   3 name  Андрей Сидоров -> Сергей Иванов    3 email sidorov@example.com -> ivanov_s@example.com
--   3 role  manager -> user
-- Run it once on a fresh install (sql/install.sql): the user ids 1, 2 and 3 are assumed.

INSERT INTO users (name, email, role) VALUES
    ('Иван Иванов', 'ivan@example.com', 'user'),
    ('Петр Петров', 'petr@example.com', 'user'),
    ('Андрей Сидоров', 'sidorov@example.com', 'manager');

-- Ivan marries and is promoted, in one transaction by an administrator of the application.
BEGIN;
SET LOCAL audit.actor = 'admin@example.com';
UPDATE users SET name = 'Иван Сидоров', role = 'admin' WHERE id = 1;
COMMIT;

-- Petr changes his own e-mail address; no actor is set, so the login role is recorded.
UPDATE users SET email = 'petr_p@example.com' WHERE id = 2;

-- Andrey's record is corrected in full: three fields, three audit rows.
BEGIN;
SET LOCAL audit.actor = 'hr@example.com';
UPDATE users
SET name = 'Сергей Иванов', email = 'ivanov_s@example.com', role = 'user'
WHERE id = 3;
COMMIT;

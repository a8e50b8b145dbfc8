"""The staff community board: posts and likes."""
from handlers import crud_operations, one
from middleware.tenancy import current_caller
from models import crud
from models import resources
from models.resources import COMMUNITY_POSTS

(list_community_posts, get_community_post, create_community_post, update_community_post,
 delete_community_post) = crud_operations(COMMUNITY_POSTS)


def like_community_post(id_: str):
    """Like a post as the caller, once (liking it again changes nothing)."""
    return one(crud.change_row(COMMUNITY_POSTS, current_caller(), id_, resources.like, action="like"))


def unlike_community_post(id_: str):
    """Take the caller's like of a post back."""
    return one(crud.change_row(COMMUNITY_POSTS, current_caller(), id_, resources.unlike, action="unlike"))
